"""Real sink processes for the store tests, and what the tests read from them.

A sink is ``ingress sink`` in a subprocess; each one imports chDB (seconds), so
the tests start as few as they can. Waits end on conditions the sink and the
broker can show (the consumer group's committed offsets, the sink's counters),
never after a fixed sleep.
"""
from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time

# The product's consumer group settings (session 10 s) are made for real
# deployments; a test that kills a member lowers them so the group moves the
# partitions on sooner. The product code runs unchanged otherwise.
_FAST_GROUP = (
    "import sys; import ingress.sink_store.kafka_input as k; init = k.KafkaInput.__init__\n"
    "def fast(self, *a, **kw):\n"
    "    kw['options'] = {'session.timeout.ms': 3000, 'heartbeat.interval.ms': 300,\n"
    "                     'topic.metadata.refresh.interval.ms': 1000, **(kw.get('options') or {})}\n"
    "    init(self, *a, **kw)\n"
    "k.KafkaInput.__init__ = fast\n"
    "from ingress.cli import main; sys.exit(main(sys.argv[1:]))")


def _popen_sink(store, extra, port, fast_group):
    head = ["-c", _FAST_GROUP] if fast_group and "--from-kafka" in extra else ["-m", "ingress"]
    return subprocess.Popen([sys.executable, *head, "sink", "--listen", f"127.0.0.1:{port}", "--store", str(store),
                             *extra], stderr=subprocess.PIPE, text=True)


def _listening(p):
    line = p.stderr.readline()
    assert "listening on http://127.0.0.1:" in line, line + p.stderr.read()
    return p, int(line.split("http://127.0.0.1:")[1].split("/")[0])


def start_sink(store, *extra, port=0, fast_group=True):
    """``ingress sink --listen 127.0.0.1:PORT --store STORE EXTRA...``; (process, port) once it listens."""
    return _listening(_popen_sink(store, extra, port, fast_group))


def start_sinks(*specs, fast_group=True):
    """Several sinks started at once (their chDB imports overlap); ``specs``: (store, extra, port)."""
    procs = [_popen_sink(store, extra, port, fast_group) for store, extra, port in specs]
    return [_listening(p) for p in procs]


def metric(port, name):
    """{labels: value} of one metric of a sink's /metrics; {} when it does not answer."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
    except OSError:
        return {}
    out = {}
    for m in re.finditer(rf'^{name}{{([^}}]*)}} ([0-9.e+]+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def stored(port):
    return sum(metric(port, "ingress_sink_samples_stored_total").values())


def wait_for(cond, limit_s, what, step=0.2):
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(step)
    assert cond(), f"not within {limit_s}s: {what}"


def group_lag(bootstrap, group, prefix):
    """Messages of the topics starting with ``prefix`` not yet committed by ``group`` (None: unknown yet).

    The sink commits a message only after storing it (or refusing it for good),
    so 0 means every message produced so far is in a store.
    """
    from confluent_kafka import Consumer, TopicPartition

    from integration.conftest import _quiet

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "logger": _quiet})
    try:
        md = c.list_topics(timeout=10)
        tps = [TopicPartition(t, p) for t, tm in md.topics.items() if t.startswith(prefix) for p in tm.partitions]
        if not tps:
            return None
        lag = 0
        for tp in c.committed(tps, timeout=10):
            if tp.error is not None:
                return None
            low, high = c.get_watermark_offsets(tp, timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    except Exception:  # noqa: BLE001 - the broker is busy or rebalancing: ask again
        return None
    finally:
        c.close()


def wait_consumed(bootstrap, group, prefix, limit_s=120.0):
    wait_for(lambda: group_lag(bootstrap, group, prefix) == 0, limit_s, f"group {group} consumed {prefix}*",
             step=0.5)


_DUMP = """
import json, sys
from ingress.sink_store import open_store
s = open_store(sys.argv[1])
db = s.db
out = {
  "names": s.rows("SELECT tenant, name, count() AS n, toString(toUnixTimestamp64Nano(min(ts))) AS t0, "
                  "toString(toUnixTimestamp64Nano(max(ts))) AS t1, groupUniqArray(tags['team']) AS teams, "
                  "groupUniqArray(host) AS hosts FROM `%s`.samples GROUP BY tenant, name" % db, {}),
  "batches": s.rows("SELECT tenant, lower(hex(batch_id)) AS id, sum(samples) AS n FROM `%s`.batches FINAL "
                    "GROUP BY tenant, id" % db, {}),
  "dups": s.rows("SELECT count() AS n FROM (SELECT tenant, name, series, ts, count() AS c FROM `%s`.samples "
                 "GROUP BY tenant, name, series, ts HAVING c > 1)" % db, {})[0]["n"],
  "samples": s.rows("SELECT tenant, name, tags, toString(toUnixTimestamp64Nano(ts)) AS ts, host "
                    "FROM `%s`.samples" % db, {}) if "--samples" in sys.argv else [],
}
print(json.dumps(out, default=str))
s.close()
"""


def dump_store(store, samples=False):
    """One subprocess (chDB opens a directory in one process only) reads a stopped sink's store:

    ``names``: per (tenant, name) the row count, first and last ts (ns), teams and hosts;
    ``batches``: per tenant and batch id the samples recorded; ``dups``: (tenant, name,
    series, ts) stored more than once; ``samples`` (with ``samples=True``): every row.
    """
    r = subprocess.run([sys.executable, "-c", _DUMP, str(store), *(["--samples"] if samples else [])],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for x in d["names"]:
        x["n"], x["t0"], x["t1"] = int(x["n"]), int(x["t0"]), int(x["t1"])
    for x in d["samples"]:
        x["ts"] = int(x["ts"])
    d["dups"] = int(d["dups"])
    return d


def stop(procs):
    """SIGTERM each process still running and wait for it; the exit codes, in order."""
    import signal

    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    return [p.wait(60) for p in procs]


def kill(procs):
    for p in list(procs):
        if p.poll() is None:
            p.kill()
            p.wait(10)
