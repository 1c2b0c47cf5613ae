"""Secrets kept out of the TOML: ``{ env = "NAME" }`` and ``{ file = "/path" }`` values.

A secret output option (a Kafka ``options`` value such as ``sasl.password``, an
``headers`` value) may be written as a table naming where the value is instead of
the value itself. The reference is resolved each time the configuration is
loaded (start-up, ``check-config``, every reload), so the output built from it
gets the current value, and a changed value shows as a changed output at a
reload. The value is registered with :func:`ingress.logs.register_secret` as it is
read and never appears in a repr, a log line or an error.

A referenced file must not be readable by group or others (``chmod 600 FILE``);
one final line break is dropped.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

__all__ = ["SecretRef", "is_ref", "parse_ref", "resolve", "plain", "file_mode_problem"]


class SecretRef:
    """Where a secret is (``source`` ``"env"`` or ``"file"``, ``name``), and once resolved, its value."""

    __slots__ = ("source", "name", "value")

    def __init__(self, source: str, name: str, value: str | None = None) -> None:
        self.source, self.name, self.value = source, name, value

    def where(self) -> str:
        return f"environment variable {self.name}" if self.source == "env" else f"file {self.name}"

    def __repr__(self) -> str:  # never the value
        return f"{{ {self.source} = {self.name!r} }}"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SecretRef) and (self.source, self.name, self.value)
                == (other.source, other.name, other.value))

    def __hash__(self) -> int:
        return hash((self.source, self.name))


def is_ref(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and next(iter(v)) in ("env", "file")


def parse_ref(v: dict) -> SecretRef:
    """``{ env = "NAME" }`` / ``{ file = "/abs/path" }`` -> SecretRef; ValueError naming the problem."""
    import re

    if not isinstance(v, dict) or len(v) != 1 or next(iter(v)) not in ("env", "file"):
        raise ValueError('a secret reference is { env = "NAME" } or { file = "/path" }')
    (source, name), = v.items()
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source} must be a non-empty string")
    if source == "env" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{name!r} is not an environment variable name")
    if source == "file" and ("\x00" in name or not name.startswith("/")):
        raise ValueError(f"{name!r} is not an absolute path")
    return SecretRef(source, name)


def file_mode_problem(path: str | os.PathLike) -> str | None:
    """Why a secret file may not be used because of its mode, or None (also None when it cannot be stat'ed)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return f"{path} is readable by group or others; run: chmod 600 {path}"
    return None


def resolve(ref: SecretRef, label: str) -> SecretRef:
    """Read the secret now; a resolved copy. ValueError (never quoting the value) when it cannot be."""
    from ingress.logs import register_secret

    if ref.source == "env":
        value = os.environ.get(ref.name)
        if value is None:
            raise ValueError(f"environment variable {ref.name} is not set")
    else:
        problem = file_mode_problem(ref.name)
        if problem:
            raise ValueError(problem)
        try:
            value = Path(ref.name).read_text("utf-8")
        except FileNotFoundError:
            raise ValueError(f"file {ref.name} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else "not UTF-8 text"
            raise ValueError(f"file {ref.name}: {reason}") from None
        register_secret(value, label)
        value = value[:-2] if value.endswith("\r\n") else value[:-1] if value.endswith("\n") else value
    register_secret(value, label)
    if not value:
        raise ValueError(f"{ref.where()} is empty")
    return SecretRef(ref.source, ref.name, value)


def plain(v: Any) -> Any:
    """The value to use: a resolved reference's value, anything else as is."""
    return v.value if isinstance(v, SecretRef) else v
