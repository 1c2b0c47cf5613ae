"""Health collector: HTTP(S) GET, TCP connect and process-alive checks, each up/down with latency.

Every network check runs on its own worker thread with its own timeout, all at
once, so a slow or hanging target never holds the others back. A pass waits for
the checks it started, at most for the longest timeout (plus a little); a check
still running then (a DNS lookup hanging past its socket timeout) is reported
down and is not started again until it has finished.

Checks come from the ``checks`` option, a list of tables::

    {"name": "api", "url": "http://127.0.0.1:8080/health", "timeout": "2s", "expect_status": 200}
    {"name": "db", "tcp": "127.0.0.1:5432", "timeout": 1.5}
    {"name": "nginx", "process": "nginx*"}

``url`` is fetched with one GET (redirects are not followed, so a 301 can be
expected); the check is up when the status is in ``expect_status`` (a number or
a list; default any 2xx or 3xx). ``tcp`` is up when a connection is accepted.
``process`` is up when at least one process's name matches the glob (each
process's ``/proc/PID/comm``, the name ``ps -o comm`` shows, kept open between
passes). ``timeout`` is seconds or a
duration string (``500ms``, ``2s``); default 5 s.
``insecure = true`` skips TLS certificate verification for that check.
"""
from __future__ import annotations

import os
import re
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

import numpy as np

from ingress._core import _procfs as pf
from ingress.collect._util import fd_budget
from ingress.collect.base import GAUGE, Collector, ColumnBuilder, Columns, MetricSpec, OptionSpec
from ingress.errors import ConfigError
from ingress.names import CHECK_NAME_RE
from ingress.options import REQUIRED, Bool, Duration, HostPort, Int, Option, Section, Str, Url
from ingress.locator import format_path

# [[tenants.health]]: one table per check, the rows of the `checks` option.
CHECK_SECTION = Section("tenants.health", True,
                        "Health checks run by the `health` collector; each has exactly one of "
                        "`url`, `tcp`, `process`.")
_H = CHECK_SECTION.name
CHECK_OPTIONS = (
    Option(_H, "name", Str(CHECK_NAME_RE, "check name"), REQUIRED,
           "The check's name, unique within the tenant; the `check` tag of its samples."),
    Option(_H, "url", Url(), None, "HTTP(S) URL to GET.", default_doc="none"),
    Option(_H, "tcp", HostPort(), None, "Address to open a TCP connection to.", default_doc="none"),
    Option(_H, "process", Str(), None, "Process-name glob; healthy while a matching process runs.",
           default_doc="none"),
    Option(_H, "timeout", Duration(positive=True), "2s", "Time limit of one check."),
    Option(_H, "expect_status", Int(100, 599), None,
           "HTTP status that counts as healthy (url checks only).", default_doc="any 2xx"),
    Option(_H, "insecure", Bool(), False, "Skip TLS certificate verification (https url checks only)."),
)

_KEYS = {"name", "url", "tcp", "process", "timeout", "expect_status", "insecure"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_BODY_LIMIT = 1 << 16


def _seconds(v, where: str) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        s = float(v)
    else:
        m = _DURATION.match(str(v))
        if not m:
            raise ConfigError(f"{where}: {v!r} is not a duration (e.g. 500ms, 2s)")
        s = float(m.group(1)) * _UNIT[m.group(2)]
    if not s > 0:
        raise ConfigError(f"{where}: {v!r} must be more than zero")
    return s


@dataclass
class Check:
    """One configured check and its last outcome."""

    name: str
    kind: str  # "http", "tcp" or "process"
    target: str
    timeout: float = 5.0
    expect: frozenset[int] | None = None  # None: any 2xx/3xx
    insecure: bool = False
    future: Future | None = None
    last_error: str | None = None
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint32))

    def run(self) -> tuple[bool, float | None, int | None]:
        """Do the check once: (up, latency in seconds or None, HTTP status or None). Never raises."""
        t0 = time.perf_counter()
        try:
            if self.kind == "tcp":
                host, port = _split_hostport(self.target)
                with socket.create_connection((host, port), timeout=self.timeout):
                    pass
                self.last_error = None
                return True, time.perf_counter() - t0, None
            status = self._http()
            latency = time.perf_counter() - t0
            ok = status in self.expect if self.expect is not None else 200 <= status < 400
            self.last_error = None if ok else f"HTTP status {status}"
            return ok, latency, status
        except Exception as e:  # any failure is "down", with the reason kept for the control API
            self.last_error = f"{type(e).__name__}: {e}"
            return False, None, None

    def _http(self) -> int:
        # Imported on first use: an agent without HTTP checks does not carry
        # http.client and the TLS libraries (several MB of RSS).
        import http.client
        import ssl

        from ingress.proxy import proxy_for

        u = urlsplit(self.target)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        port = u.port or (443 if u.scheme == "https" else 80)
        px = proxy_for(u.scheme, u.hostname, port)  # HTTPS_PROXY / HTTP_PROXY / NO_PROXY
        headers = {"User-Agent": "ingress-health/1", "Connection": "close"}
        if u.scheme == "https":
            ctx = ssl.create_default_context()
            if self.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if px:  # tunnel with CONNECT; TLS still ends at (and verifies) the target
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    px[0], px[1], timeout=self.timeout, context=ctx)
                conn.set_tunnel(u.hostname, port, headers=px[2])
            else:
                conn = http.client.HTTPSConnection(u.hostname, port, timeout=self.timeout, context=ctx)
        elif px:  # plain http through a proxy: the absolute URL on the request line
            conn = http.client.HTTPConnection(px[0], px[1], timeout=self.timeout)
            path = f"http://{u.hostname}:{port}{path}"
            headers.update(px[2])
        else:
            conn = http.client.HTTPConnection(u.hostname, port, timeout=self.timeout)
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read(_BODY_LIMIT)  # a check costs at most this much body
            return resp.status
        finally:
            conn.close()


def _split_hostport(s: str) -> tuple[str, int]:
    m = re.match(r"^\[([^\]]+)\]:(\d+)$", s) or re.match(r"^([^:\[\]]+):(\d+)$", s)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"{s!r} is not host:port")
    return m.group(1), int(m.group(2))


def parse_checks(raw) -> list[Check]:
    """Validate the ``checks`` option; every refusal names the check and key."""
    if not isinstance(raw, list):
        raise ConfigError(f"collector 'health': option checks: {raw!r} is not a list of tables")
    checks: list[Check] = []
    seen: set[str] = set()
    for i, c in enumerate(raw):
        where = f"collector 'health': checks[{i}]"
        if not isinstance(c, dict):
            raise ConfigError(f"{where}: {c!r} is not a table")
        unknown = sorted(set(c) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        name = c.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name: {name!r} is not a non-empty string")
        if name in seen:
            raise ConfigError(f"{where}.name: {name!r} is used by another check")
        seen.add(name)
        targets = [k for k in ("url", "tcp", "process") if k in c]
        if len(targets) != 1:
            raise ConfigError(f"{where}: needs exactly one of url, tcp, process (got {targets or 'none'})")
        kind = targets[0]
        target = c[kind]
        if not isinstance(target, str) or not target:
            raise ConfigError(f"{where}.{kind}: {target!r} is not a non-empty string")
        if kind == "url":
            u = urlsplit(target)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ConfigError(f"{where}.url: {target!r} is not an http:// or https:// URL")
            try:
                _ = u.port  # raises on a port that is not a number
            except ValueError:
                raise ConfigError(f"{where}.url: {target!r} has an invalid port") from None
        elif kind == "tcp":
            try:
                _split_hostport(target)
            except ValueError as e:
                raise ConfigError(f"{where}.tcp: {e}") from None
        expect = c.get("expect_status")
        if expect is not None:
            vals = expect if isinstance(expect, list) else [expect]
            if kind != "url" or not vals or not all(isinstance(v, int) and 100 <= v <= 599 for v in vals):
                raise ConfigError(f"{where}.expect_status: {expect!r} is not an HTTP status or a list of them"
                                  + ("" if kind == "url" else " (and only url checks have one)"))
            expect = frozenset(vals)
        timeout = _seconds(c.get("timeout", 5.0), f"{where}.timeout")
        checks.append(Check(name, "http" if kind == "url" else kind, target, timeout, expect,
                            bool(c.get("insecure", False))))
    return checks


class HealthCollector(Collector):
    """Configured HTTP, TCP and process checks: up/down, latency, HTTP status, matching processes."""

    name = "health"
    priority = 4
    metrics = (
        MetricSpec("health.up", "1", "1 when the check passed this pass, else 0", GAUGE, ("check", "kind")),
        MetricSpec("health.latency", "s", "Time to a TCP connection, or to the whole HTTP response; "
                   "absent when the check got no answer", GAUGE, ("check", "kind")),
        MetricSpec("health.http.status", "1", "HTTP status code of the last answer", GAUGE, ("check",)),
        MetricSpec("health.process.count", "1", "Processes whose name matches the check's glob", GAUGE,
                   ("check",)),
    )
    options = (
        OptionSpec("checks", [], "The checks: tables with name, one of url/tcp/process, timeout, "
                   "expect_status, insecure; from the tenant's [[tenants.health]] tables"),
    )

    @classmethod
    def table(cls) -> tuple[Section, tuple[Option, ...]]:
        return CHECK_SECTION, CHECK_OPTIONS

    @classmethod
    def check_table(cls, at, path: tuple, values, raw, listed: bool) -> None:
        collectors = path[:-1] + ("collectors",)
        if listed and not values:
            raise at.error(collectors, "the health collector needs at least one [[tenants.health]] check")
        if values and not listed:
            raise at.error(path, "checks are configured but 'health' is not in this tenant's collectors")
        names: dict[str, int] = {}
        for j, h in enumerate(values):
            hp = path + (j,)
            given = [k for k in ("url", "tcp", "process") if h[k] is not None]
            if len(given) != 1:
                msg = ("needs one of url, tcp, process" if not given
                       else f"give one of url, tcp, process, not {' and '.join(given)}")
                raise at.error(hp + ((given[1],) if len(given) > 1 else ()), msg)
            for k in ("expect_status", "insecure"):
                if k in raw[j] and h["url"] is None:
                    raise at.error(hp + (k,), "applies to url checks only")
            if h["name"] in names:
                raise at.error(hp + ("name",), f"{h['name']!r} is already the name of "
                                               f"{format_path(path + (names[h['name']],))}")
            names[h["name"]] = j

    @classmethod
    def tenant_options(cls, tenant) -> dict:
        checks = []
        for h in tenant.collector_tables.get(cls.name, ()):
            kind = next(k for k in ("url", "tcp", "process") if h[k] is not None)
            c = {"name": h["name"], kind: h[kind], "timeout": h["timeout"]}
            if h["expect_status"] is not None:
                c["expect_status"] = h["expect_status"]
            if h["insecure"]:
                c["insecure"] = True
            checks.append(c)
        return {"checks": checks}

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self.checks = parse_checks(self.opts["checks"])
        for c in self.checks:
            ids = [self.series("health.up", check=c.name, kind=c.kind)]
            if c.kind == "process":
                ids.append(self.series("health.process.count", check=c.name))
            else:
                ids.append(self.series("health.latency", check=c.name, kind=c.kind))
            if c.kind == "http":
                ids.append(self.series("health.http.status", check=c.name))
            c.ids = np.array(ids, np.uint32)
        net = [c for c in self.checks if c.kind != "process"]
        self._pool = ThreadPoolExecutor(max_workers=min(32, len(net)), thread_name_prefix="ingress-health") \
            if net else None
        self._lock = threading.Lock()
        self._out = ColumnBuilder(max(16, 3 * len(self.checks)))
        self._commf = None

    def _process_counts(self, globs: list[str]) -> list[int]:
        root = os.fsencode(self.settings.proc_root)
        pids = np.empty(4096, np.int32)
        n = pf.list_pids(root, pids)
        if n > len(pids):
            pids = np.empty(2 * n, np.int32)
            n = min(pf.list_pids(root, pids), len(pids))
        pids = pids[:n]
        comm = np.zeros((n, pf.COMM_LEN_), np.uint8)
        err = np.empty(n, np.int32)
        if self._commf is None:
            # Only the names are needed: each pid's `comm`, held open between passes
            # (0.8 us per process, against 12.9 us to open and read `stat`).
            self._commf = pf.PidFiles(root, b"comm", min(4096, fd_budget() // 4))
        self._commf.read_comm(pids, comm, err)
        names = [b.decode("utf-8", "replace") for b in comm[err == 0].view(f"S{pf.COMM_LEN_}").ravel().tolist()]
        return [sum(1 for nm in names if fnmatchcase(nm, g)) for g in globs]

    def collect(self, now_ns: int) -> Columns:
        out = self._out
        out.reset()
        started = []
        with self._lock:  # collect() may be called from more than one scheduler thread
            for c in self.checks:
                # a check that overran an earlier pass and has ended since starts afresh
                if c.kind != "process" and (c.future is None or c.future.done()):
                    c.future = self._pool.submit(c.run)
                    started.append(c)
            procs = [c for c in self.checks if c.kind == "process"]
            if procs:
                for c, n in zip(procs, self._process_counts([c.target for c in procs])):
                    out.put(c.ids, np.array([1.0 if n > 0 else 0.0, float(n)]))
                    c.last_error = None if n else "no matching process"
            if started:
                wait_futures([c.future for c in started], timeout=max(c.timeout for c in started) + 0.25)
            for c in self.checks:
                if c.kind == "process":
                    continue
                f = c.future
                if f is not None and f.done():
                    up, latency, status = f.result()
                    c.future = None
                else:  # still running past its timeout: down now, and not started again until it ends
                    up, latency, status = False, None, None
                    c.last_error = "still running past its timeout"
                vals = [1.0 if up else 0.0, np.nan if latency is None else latency]
                if c.kind == "http":
                    vals.append(np.nan if status is None else float(status))
                out.put(c.ids, np.array(vals))
        return out.finish(now_ns)

    def status(self) -> dict[str, dict]:
        """Per check: kind, target and the last error (``None`` when it passed), for the control API."""
        return {c.name: {"kind": c.kind, "target": c.target, "error": c.last_error} for c in self.checks}

    def close(self) -> None:
        if self._commf is not None:
            self._commf.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
