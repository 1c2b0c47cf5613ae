"""RemoteWriteOutput against a real Prometheus server (remote-write receiver), read back over its HTTP API.

The session fixture finds ``prometheus`` on PATH; when it is missing and the
tests run as root it installs Debian's package (``apt-get update``, then
``apt-get install -y --no-install-recommends prometheus``); otherwise the tests
skip with one line saying why. Prometheus 2.42 runs on a free loopback port with
``--web.enable-remote-write-receiver`` and a temporary TSDB.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from ingress import wire
from ingress.errors import PermanentError, RetryableError
from ingress.spool import Spool, TenantPolicy
from ingress.outputs.base import OutgoingBatch
from ingress.outputs.delivery import Delivery
from ingress.outputs.remote_write import RemoteWriteOutput, metric_name

from outputs.fakes import wait_for

from .conftest import Reply, free_port
from .test_http import send

pytestmark = pytest.mark.integration


def _prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path:
        return path
    if os.geteuid() != 0:
        pytest.skip("prometheus is not on PATH and installing Debian's package needs root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"]):
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"cannot install prometheus: {' '.join(cmd)}: {e}")
        if r.returncode != 0:
            last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
            pytest.skip(f"cannot install prometheus: {' '.join(cmd)} exited {r.returncode}: {last[0]}")
    path = shutil.which("prometheus")
    if not path:
        pytest.skip("apt-get installed prometheus but no prometheus binary is on PATH")
    return path


class Prometheus:
    def __init__(self, binary: str, workdir) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-remote-write-receiver",
             f"--storage.tsdb.path={workdir / 'tsdb'}", "--config.file=/dev/null"],
            stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: see {workdir / 'prometheus.log'}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready within 60 s")

    @property
    def write_url(self) -> str:
        return self.url + "/api/v1/write"

    def api(self, path: str, **params) -> object:
        q = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{q}", timeout=10) as r:
            doc = json.load(r)
        assert doc["status"] == "success", doc
        return doc["data"]

    def samples(self, selector: str, at_s: float) -> dict:
        """{frozenset(labels): [(ts_ms, value), ...]} of every raw sample in the hour before ``at_s``."""
        out = {}
        for r in self.api("/api/v1/query", query=f"{selector}[1h]", time=f"{at_s:.3f}")["result"]:
            out[frozenset(r["metric"].items())] = [(round(float(t) * 1000), float(v)) for t, v in r["values"]]
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory):
    p = Prometheus(_prometheus_binary(), tmp_path_factory.mktemp("prometheus"))
    yield p
    p.stop()


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def expected(tenant, host, series, idx, ts, vals, tenant_label=None):
    """{frozenset(labels): [(ms, value)]} the batch should become, from the naming functions' rules."""
    from ingress.outputs.remote_write import series_labels

    out: dict = {}
    for s, t, v in sorted(zip(idx, ts, vals), key=lambda x: (x[0], x[1])):
        key = frozenset(series_labels(series[s][0], series[s][1], host, tenant, tenant_label))
        rows = out.setdefault(key, [])
        if rows and rows[-1][0] == t // 1_000_000:
            rows[-1] = (t // 1_000_000, v)
        else:
            rows.append((t // 1_000_000, v))
    return out


def check_stored(prometheus, want: dict, selector: str, at_s: float) -> None:
    got = prometheus.samples(selector, at_s)
    assert set(got) == set(want), f"series differ: {set(got) ^ set(want)}"
    for key, rows in want.items():
        g = got[key]
        assert [t for t, _ in g] == [t for t, _ in rows], key
        assert all(_same(a, b) for (_, a), (_, b) in zip(g, rows)), (key, g, rows)


SERIES = [("cpu.time", {"cpu": "0", "mode": "user"}), ("cpu.time", {"cpu": "1", "mode": "system"}),
          ("memory.used", {}), ("network.io.bytes", {"interface": "eth0", "direction": "rx"}),
          ("custom.thing", {"weird key": "x y", "9": "nine"})]


def make_batch(tenant, t0_ns, n_ticks, seed=0):
    idx, ts, vals = [], [], []
    for k in range(n_ticks):
        for s in reversed(range(len(SERIES))):  # not in series order
            idx.append(s)
            ts.append(t0_ns + k * 1_000_000_000 + s * 1_000_000)
            vals.append(float(seed * 1000 + k * 10 + s) + 0.25)
    return idx, ts, vals


def test_every_series_and_value_reads_back(prometheus, tmp_path):
    t0 = (time.time_ns() // 1_000_000_000 - 120) * 1_000_000_000
    idx, ts, vals = make_batch("acme", t0, 5)
    # one sample out of time order within its series, one NaN, one collapsing millisecond pair
    idx += [2, 2, 2]
    ts += [t0 - 5_000_000_000, t0 + 7_000_000_000, t0 + 7_000_400_000]
    vals += [math.nan, 1.0, 2.0]
    payload = wire.encode("acme", "web-1", SERIES, idx, ts, vals)
    out = RemoteWriteOutput("rw", prometheus.write_url, tenant_label="tenant")
    b = OutgoingBatch("acme", wire.peek(payload).batch_id, payload, len(idx), "web-1")
    assert send(out, b) is None
    out.close()
    want = expected("acme", "web-1", SERIES, idx, ts, vals, "tenant")
    at = t0 / 1e9 + 60
    check_stored(prometheus, want, '{tenant="acme"}', at)
    names = prometheus.api("/api/v1/label/__name__/values")
    for n in ("cpu_time_seconds_total", "memory_used_bytes", "network_io_bytes_total", "custom_thing"):
        assert n in names
    series = prometheus.api("/api/v1/series", **{"match[]": '{tenant="acme"}', "start": t0 / 1e9 - 60,
                                                  "end": at})
    assert {frozenset(s.items()) for s in series} == set(want)
    latest = prometheus.api("/api/v1/query", query='memory_used_bytes{tenant="acme"}', time=f"{at:.3f}")
    assert float(latest["result"][0]["value"][1]) == 2.0  # the later sample of the collapsed millisecond


def test_delivery_from_a_real_spool_to_prometheus_two_tenants(prometheus, tmp_path):
    tenants = ("rw2-a", "rw2-b")
    sp = Spool(tmp_path / "spool", {t: TenantPolicy(max_bytes=64 << 20, retention_s=3600, encrypt=False)
                                    for t in tenants}, outputs=["rw"], write_mb_s=None)
    t0 = (time.time_ns() // 1_000_000_000 - 600) * 1_000_000_000
    want = {}
    for t_i, t in enumerate(tenants):
        for i in range(4):  # four batches per tenant, in time order
            idx, ts, vals = make_batch(t, t0 + i * 10_000_000_000, 3, seed=t_i * 10 + i)
            payload = wire.encode(t, "web-1", SERIES, idx, ts, vals)
            sp.append(t, wire.peek(payload).batch_id, payload, len(idx), time.time_ns())
            for k, rows in expected(t, "web-1", SERIES, idx, ts, vals, "tenant").items():
                want.setdefault(k, []).extend(rows)
    out = RemoteWriteOutput("rw", prometheus.write_url, tenant_label="tenant", concurrency=1)
    d = Delivery(sp, [out], None, tenants=tenants, data_dir=tmp_path, host="web-1", idle_poll_s=0.05)
    d.start()
    try:
        assert wait_for(lambda: all(not sp.pending(t, "rw") for t in tenants), 30)
    finally:
        d.stop(5)
        out.close()
        sp.close()
    st = d.stats()
    assert all(st[t]["rw"]["sent_batches"] == 4 and st[t]["rw"]["dead_letters"] == 0 for t in tenants)
    for t in tenants:
        check_stored(prometheus, {k: v for k, v in want.items() if ("tenant", t) in k}, f'{{tenant="{t}"}}',
                     t0 / 1e9 + 120)


def test_out_of_order_samples_are_a_permanent_error(prometheus):
    t0 = (time.time_ns() // 1_000_000_000 - 60) * 1_000_000_000
    out = RemoteWriteOutput("rw", prometheus.write_url, tenant_label="tenant")

    def one(ts_ns, v):
        p = wire.encode("ooo", "web-1", [("memory.used", {})], [0], [ts_ns], [v])
        return send(out, OutgoingBatch("ooo", wire.peek(p).batch_id, p, 1, "web-1"))

    assert one(t0, 1.0) is None
    err = one(t0, 2.0)  # the same timestamp, another value: Prometheus answers 400
    assert isinstance(err, PermanentError) and err.status == 400
    out.close()


def test_request_headers_and_retry_classes(http_server):
    http_server.replies(Reply(500, b"boom"), Reply(429, b"slow", {"Retry-After": "3"}), Reply(404, b"no"),
                        Reply(408, b"late"), then=Reply(204, b""))
    out = RemoteWriteOutput("rw", http_server.url + "/api/v1/write", credential=lambda t: "k-" + t,
                            tenant_header="X-Scope-OrgID", headers={"X-Extra": "1"})
    p = wire.encode("acme", "web-1", [("memory.used", {})], [0], [1_000_000], [1.0])
    b = lambda: OutgoingBatch("acme", wire.peek(p).batch_id, p, 1, "web-1")  # noqa: E731
    e500, e429, e404, e408, ok = (send(out, b()) for _ in range(5))
    assert isinstance(e500, RetryableError) and e500.status == 500
    assert isinstance(e429, RetryableError) and e429.retry_after == 3.0
    assert isinstance(e404, PermanentError) and e404.status == 404
    assert isinstance(e408, PermanentError)  # remote write retries 5xx and 429 only
    assert ok is None
    h = http_server.requests[-1].headers
    assert h["content-type"] == "application/x-protobuf" and h["content-encoding"] == "snappy"
    assert h["x-prometheus-remote-write-version"] == "0.1.0"
    assert h["x-scope-orgid"] == "acme" and h["authorization"] == "Bearer k-acme" and h["x-extra"] == "1"
    assert metric_name("memory.used", "gauge", "By") == "memory_used_bytes"
    out.close()


def test_ingress_run_from_a_configuration_file_to_prometheus(prometheus, tmp_path):
    """`type = "remote_write"` in a real configuration: check-config, then a real agent into Prometheus.

    Tenant acme has a credential (sent as a bearer token), globex none (no Authorization):
    both reach Prometheus, each series with its tenant label.
    """
    import os
    import subprocess
    import sys
    import time

    (tmp_path / "acme.key").write_text("acme-secret\n")
    (tmp_path / "acme.key").chmod(0o600)
    os.chmod(tmp_path / "acme.key", 0o600)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "rw-e2e"
interval = "1s"
shutdown_timeout = "5s"
[agent.batch]
max_delay = "200ms"
[control]
listen = "127.0.0.1:0"
[[tenants]]
id = "acme"
collectors = ["memory"]
api_key_file = "{tmp_path / 'acme.key'}"
[[tenants]]
id = "globex"
collectors = ["memory"]
[[outputs]]
type = "remote_write"
url = "{prometheus.write_url}"
tenant_label = "tenant"
""")
    ing = [sys.executable, "-m", "ingress"]
    r = subprocess.run([*ing, "check-config", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr
    r = subprocess.run([*ing, "run", "-c", str(cfg), "--duration", "4"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    spool = subprocess.run([*ing, "spool", "stats", "-c", str(cfg), "--json"], capture_output=True, text=True,
                           timeout=60)
    import json as _json

    stats = _json.loads(spool.stdout)
    assert all(stats[t]["samples_pending"] == 0 for t in ("acme", "globex")), stats
    got = prometheus.samples('{host="rw-e2e"}', time.time() + 1)
    tenants = {dict(k).get("tenant") for k in got}
    assert tenants == {"acme", "globex"}
    assert all(dict(k)["__name__"].startswith("memory_") for k in got)


def test_format_json_is_refused_for_remote_write_and_otlp_in_one_line(tmp_path):
    import subprocess
    import sys

    for otype, url in (("remote_write", "http://127.0.0.1:9/api/v1/write"), ("otlp", "http://127.0.0.1:9/v1/metrics")):
        cfg = tmp_path / f"{otype}.toml"
        cfg.write_text(f'[[tenants]]\nid = "acme"\n[[outputs]]\ntype = "{otype}"\nurl = "{url}"\nformat = "json"\n')
        r = subprocess.run([sys.executable, "-m", "ingress", "check-config", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"{cfg}:6: outputs[0].format: {otype} outputs send" in r.stderr
