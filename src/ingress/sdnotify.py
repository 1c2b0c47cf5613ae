"""systemd's readiness protocol (``Type=notify``), without libsystemd.

When systemd starts a ``Type=notify`` service it sets ``NOTIFY_SOCKET`` to a
unix datagram socket (a path, or ``@name`` for the abstract namespace). The
service sends newline-separated ``KEY=VALUE`` datagrams to it:

* ``READY=1`` once start-up finished (the agent sends it after its outputs,
  delivery, collectors and control API run);
* ``STOPPING=1`` when a graceful stop begins;
* ``WATCHDOG=1`` at least every ``WATCHDOG_USEC`` microseconds when the unit
  sets ``WatchdogSec=``; the agent pings at half that period from its main
  loop, so a main loop that hangs is restarted by systemd;
* ``STATUS=...`` a one-line status that ``systemctl status`` shows.

Without ``NOTIFY_SOCKET`` every call is a no-op, so the agent runs the same
under a terminal, a container runtime or another supervisor. A send that fails
(socket gone) is logged once and never stops the agent.
"""
from __future__ import annotations

import os
import socket

from ingress.logs import get_logger

__all__ = ["Notifier"]

log = get_logger("ingress.sdnotify")


class Notifier:
    """Sends state to systemd when ``NOTIFY_SOCKET`` is set; otherwise does nothing.

    Parameters
    ----------
    environ
        The environment to read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
        ``WATCHDOG_PID`` from (default ``os.environ``).
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]
        elif addr.startswith("/"):
            self.address = addr
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isascii() and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; True when it was sent."""
        if self.address is None:
            return False
        msg = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg, self.address)
            return True
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.warning("systemd notify socket unusable; readiness and watchdog not reported",
                            socket=os.environ.get("NOTIFY_SOCKET", ""), error=e.strerror or str(e))
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *( [f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
