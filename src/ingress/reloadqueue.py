"""Reload requests queued for the agent's main thread.

SIGHUP and ``POST /v1/reload`` only queue a :class:`ReloadTicket` (safe in a
signal handler); :meth:`ingress.agent.Agent.run` runs the queue on its own
thread, where :func:`ingress.reload.reload` does the switching, and the asker
waits on the ticket for the change summary or the one-line error.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from ingress.errors import IngressError
from ingress.logs import get_logger

log = get_logger("ingress.agent")


class ReloadTicket:
    """One queued reload: who asked, then its result (a change summary) or its one-line error."""

    def __init__(self, actor: str, remote: str | None, trigger: str) -> None:
        self.actor, self.remote, self.trigger = actor, remote, trigger
        self.done = threading.Event()
        self.result: dict | None = None
        self.error: str | None = None


class ReloadQueue:
    def __init__(self) -> None:
        self._tickets: deque[ReloadTicket] = deque()

    def __bool__(self) -> bool:
        return bool(self._tickets)

    def request(self, actor: str, remote: str | None, trigger: str) -> ReloadTicket:
        ticket = ReloadTicket(actor, remote, trigger)
        self._tickets.append(ticket)
        return ticket

    def run(self, reload: Callable[[str, str | None, str], dict]) -> None:
        """Run every queued reload, in order; each ticket gets its answer."""
        while self._tickets:
            ticket = self._tickets.popleft()
            try:
                ticket.result = reload(ticket.actor, ticket.remote, ticket.trigger)
            except IngressError as e:
                ticket.error = str(e)
            except Exception as e:  # noqa: BLE001 - a bug in the switch must not end the agent
                log.exception("reload failed", error=str(e))
                ticket.error = f"internal error: {e}"
            finally:
                ticket.done.set()

    def refuse_all(self, why: str) -> None:
        """Answer every queued request with ``why`` without running it (the agent is stopping)."""
        for ticket in list(self._tickets):
            ticket.error = why
            ticket.done.set()
        self._tickets.clear()
