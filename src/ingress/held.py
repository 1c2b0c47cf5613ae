"""Held tenants: those whose spool could not be opened (a key file missing or wrong, a
directory where the spool keeps a file, an unreadable directory).

A held tenant is not collected and not sent, its spool is left as it is, and
an error line names it with the reason at start and every minute; every other
tenant runs. ``agent.held_tenants`` (``{tenant: reason}``) is what readiness
and the metrics read.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from ingress.errors import IngressError
from ingress.logs import get_logger

if TYPE_CHECKING:
    from ingress.agent import Agent

HELD_LOG_EVERY_S = 60.0
log = get_logger("ingress.agent")


def hold(agent: Agent, held: Mapping[str, str]) -> None:
    """Leave the held tenants out of collection and delivery; refuse to run with none left."""
    agent.held_tenants = dict(held)
    if not held:
        return
    enabled = [t.id for t in agent.tenants.enabled]
    if enabled and all(t in held for t in enabled):
        raise IngressError("every tenant is held, nothing to run: " + "; ".join(
            f"tenant {t!r}: {held[t]}" for t in enabled))
    agent.pipeline.leave_out(held)  # before the scheduler is built from its bindings
    log_held(agent.held_tenants, force=True)  # at start (and reload) always; then once a minute


def log_held(held_tenants: Mapping[str, str], force: bool = False) -> None:
    """One error line per held tenant, at most one a minute each (``force``: now, whatever came before)."""
    for tid, reason in held_tenants.items():
        log.every(("tenant held", tid), HELD_LOG_EVERY_S, force=force).error(
            "tenant held: not collected, not sent, its spool left as it is; fix the reason and restart "
            "or reload",
            tenant=tid, reason=reason)
