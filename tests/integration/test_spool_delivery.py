"""The delivery loop over the real spool: restart from what is on disk, nothing lost or re-sent twice."""
import hashlib
import time

import pytest

from ingress.sink import SinkServer
from ingress.spool import Spool, TenantPolicy
from ingress.outputs.delivery import Delivery
from ingress.outputs.file import FileOutput, read_batches
from ingress.outputs.http import HttpOutput

from outputs.fakes import wait_for

from .conftest import HANG

pytestmark = pytest.mark.integration

TENANTS = ("acme", "zeta")


def encode(tenant, i):
    from ingress import wire

    return wire.encode(tenant, "web-1", [("cpu.user", {"cpu": str(i)})], [0, 0], [i, i + 1], [1.0, 2.0])


def open_spool(d):
    return Spool(d / "spool", {t: TenantPolicy(max_bytes=64 << 20, retention_s=3600, encrypt=False)
                               for t in TENANTS}, outputs=["f", "h"], write_mb_s=None)


def test_restart_resumes_from_the_spool(tmp_path, http_server):
    from ingress import wire

    sp = open_spool(tmp_path)
    sent = {t: [] for t in TENANTS}
    for i in range(10):
        for t in TENANTS:
            payload = encode(t, i)
            bid = wire.peek(payload).batch_id
            sp.append(t, bid, payload, 2, time.time_ns())
            sent[t].append(bid)
    # First run: the file output works, the HTTP endpoint hangs for everyone.
    http_server.behave = lambda req: HANG
    f = FileOutput("f", tmp_path)
    h = HttpOutput("h", http_server.url, credential=lambda t: "k-" + t, timeout_s=30)
    d = Delivery(sp, [f, h], None, tenants=TENANTS, data_dir=tmp_path, host="web-1", idle_poll_s=0.05)
    d.start()
    assert wait_for(lambda: all(not sp.pending(t, "f") for t in TENANTS), 20)
    assert wait_for(lambda: http_server.hanging >= 2, 10)
    assert d.stop(0.2) > 0  # the hung requests are abandoned, not acknowledged
    h.close()
    f.close()
    http_server.release()
    sp.close()
    # Second run, as after a restart: a fresh spool object over the same files, a working receiver.
    keys = {t: hashlib.sha256(f"k-{t}".encode()).digest() for t in TENANTS}
    sink = SinkServer("127.0.0.1:0", tmp_path / "sink", keys).start()
    sp = open_spool(tmp_path)
    f = FileOutput("f", tmp_path)
    h = HttpOutput("h", sink.url, credential=lambda t: "k-" + t)
    d = Delivery(sp, [f, h], None, tenants=TENANTS, data_dir=tmp_path, host="web-1", idle_poll_s=0.05)
    d.start()
    try:
        assert wait_for(lambda: all(not sp.pending(t, "h") for t in TENANTS), 30)
    finally:
        d.stop(5)
        h.close()
        f.close()
        sink.stop()
        sp.close()
    for t in TENANTS:
        assert sink.store.seen(t) == set(sent[t])
        # The file output acknowledged everything in the first run: nothing written twice.
        in_files = [wire.peek(b).batch_id for p in f.files(t) for b in read_batches(p)]
        assert in_files == sent[t]
    st = d.stats()
    assert st["acme"]["h"]["sent_batches"] == 10 and st["acme"]["f"]["sent_batches"] == 0
