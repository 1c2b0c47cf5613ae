"""What an output plugin declares, and how the agent builds its outputs from them.

An output module ends with one declaration::

    PLUGIN = OutputPlugin(
        type="file",
        options=(Option("outputs", "path", PathKind(), None, "..."), ...),
        check=_check,     # optional: rules across keys, FILE:LINE errors through `at`
        build=_build,     # (OutputSettings, BuildContext) -> Output
    )

and ``ingress/outputs/__init__.py`` registers it by type. The keys every
output takes (``type``, ``name``, ``tenants``, ``format``, ``[outputs.retry]``,
``[outputs.breaker]``) are declared once, in :mod:`ingress.config`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ingress.errors import ConfigError
from ingress.options import ErrorAt, Option

if TYPE_CHECKING:
    from ingress.config import AgentSettings, OutputSettings, Settings
    from ingress.stages import OutputStage

__all__ = ["OutputPlugin", "BuildContext", "construct", "build_outputs"]


@dataclass(frozen=True)
class BuildContext:
    """What building an output may use besides its own settings."""

    data_dir: Path
    credential: Callable[[str], str] | None  # tenant id -> its credential, read at every use
    where: Callable[[str], str]  # key -> "FILE:LINE: outputs[i].key", for errors found while building
    has_credential: Callable[[str], bool] = lambda tenant: True  # tenant id -> it configures one

    def optional_credential(self) -> Callable[[str], str | None] | None:
        """``credential`` for outputs where a credential is optional per tenant: ``None``
        for a tenant that configures none (no ``Authorization`` header is sent)."""
        cred, has = self.credential, self.has_credential
        if cred is None:
            return None
        return lambda tenant: cred(tenant) if has(tenant) else None


@dataclass(frozen=True)
class OutputPlugin:
    """One output type, declared next to its code.

    Parameters
    ----------
    type
        The ``type`` value of ``[[outputs]]`` that selects it.
    options
        Its own keys of ``[[outputs]]`` (section ``"outputs"``), each with kind, default and help.
    build
        ``(settings, context) -> Output`` (not started).
    check
        ``(at, path, values, agent)``: rules across keys, raising ``at.error(path + (key,), message)``;
        ``values`` holds every key of the table by field (it may fill computed defaults in).
    needs_credential
        Every tenant it serves must have ``api_key_env`` or ``api_key_file``.
    destinations
        ``settings -> [(key, "host:port"), ...]``: where it connects, checked against
        ``agent.allow_destinations`` when the configuration is loaded.
    validate
        ``(settings, where)``: what only the client library can tell (``check-config``
        runs it); raises ConfigError, ``where(keys)`` giving ``FILE:LINE: outputs[i].keys``.
    local
        It writes on this host only; while only local outputs run, the agent logs a
        summary line per interval.
    """

    type: str
    options: tuple[Option, ...]
    build: Callable[[OutputSettings, BuildContext], OutputStage]
    check: Callable[[ErrorAt, tuple, dict, AgentSettings], None] | None = None
    needs_credential: bool = False
    local: bool = False
    destinations: Callable[[OutputSettings], list[tuple[str, str]]] | None = None
    validate: Callable[[OutputSettings, Callable[[tuple], str]], None] | None = None


def construct(cls: type, ctx: BuildContext, args: dict, optional: dict) -> Any:
    """``cls(**args, **optional)``, refusing settings the class cannot take.

    ``optional`` holds settings at non-default values; one the constructor does
    not accept is a ConfigError rather than silently ignored.
    """
    params = inspect.signature(cls).parameters
    for k, v in optional.items():
        if k not in params:
            raise ConfigError(f"{ctx.where(k)}: {v!r} is not supported by this build's {cls.type} output")
    return cls(**args, **optional)


def build_outputs(settings: Settings, credential: Callable[[str], str] | None) -> list[OutputStage]:
    """One output per ``[[outputs]]`` table, built by its type's plugin (not started)."""
    from ingress.config import locate
    from ingress.outputs import OUTPUTS

    with_credential = {t.id for t in settings.tenants
                       if t.api_key_env is not None or t.api_key_file is not None}
    outs = []
    for i, o in enumerate(settings.outputs):
        ctx = BuildContext(settings.agent.data_dir, credential,
                           lambda k, i=i: locate(settings, ("outputs", i, k)),
                           lambda tid: tid in with_credential)
        outs.append(OUTPUTS[o.type].build(o, ctx))
    return outs
