"""An unreachable broker is one warning soon after start and one when it answers again;
librdkafka's own lines are rate-limited (one per facility and level a minute)."""
import logging
import os
import time

import pytest

from ingress.outputs.base import OutgoingBatch
from ingress.outputs.kafka import KafkaOutput, _LibLog

from .conftest import Tansu, free_port

pytestmark = pytest.mark.integration


def poll_until(out, pred, budget_s):
    end = time.monotonic() + budget_s
    while time.monotonic() < end:
        out.poll(0.1)
        if pred():
            return True
    return pred()


def test_closed_port_then_a_real_broker_on_it(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="ingress.outputs.kafka")
    port = free_port()
    out = KafkaOutput("k", f"127.0.0.1:{port}", "it-unreachable-{tenant}")
    out.start()
    done = []
    try:
        def unreachable_lines():
            return [r for r in caplog.records if r.levelno == logging.WARNING and "unreachable" in r.getMessage()]

        # The contract: reported within 10 s of start. Poll that long at most, then a while more.
        assert poll_until(out, lambda: unreachable_lines(), 10.0), "no warning within 10 s of start"
        poll_until(out, lambda: False, 3.0)
        assert len(unreachable_lines()) == 1 and out.unreachable is not None
        lib = [r for r in caplog.records if r.msg.startswith("%s [%s] %s")]
        keys = [(r.args[0], r.levelno) for r in lib]
        assert len(keys) == len(set(keys)), f"librdkafka lines not rate-limited: {keys}"

        broker = Tansu(tmp_path)
        broker.port, broker.bootstrap = port, f"127.0.0.1:{port}"
        broker.start()
        try:
            b = OutgoingBatch("acme", os.urandom(16), b"payload", 1, "web-1")
            out.submit(b, lambda batch, err: done.append(err))
            assert poll_until(out, lambda: done and done[-1] is None, 60.0) or \
                _resubmit_until_ok(out, done)
            back = [r for r in caplog.records if "reachable again" in r.getMessage()]
            assert len(back) == 1 and back[0].levelno == logging.WARNING and out.unreachable is None
            assert len(unreachable_lines()) == 1
        finally:
            out.close()
            broker.stop()
    finally:
        out.close()


def _resubmit_until_ok(out, done):
    """A batch that timed out while the broker started is retried, as the delivery loop would."""
    for _ in range(5):
        done.clear()
        out.submit(OutgoingBatch("acme", os.urandom(16), b"payload", 1, "web-1"), lambda b, e: done.append(e))
        if poll_until(out, lambda: done, 40.0) and done[-1] is None:
            return True
    return False


def test_liblog_lets_one_line_per_facility_and_level_through_and_counts_the_rest():
    records = []

    class L:
        def isEnabledFor(self, level):
            return True

        def log(self, level, fmt, *args):
            records.append((level, fmt % args))

    now = [0.0]
    lib = _LibLog(L(), interval_s=60.0, clock=lambda: now[0])
    for _ in range(50):
        lib.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "Connection refused")
        lib.log(logging.WARNING, "%s [%s] %s", "SSL", "rdkafka#producer-1", "handshake failed")
    assert len(records) == 2
    assert records[0][0] == logging.INFO  # a refused connection is demoted
    now[0] = 61.0
    lib.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "Connection refused")
    assert len(records) == 3 and records[-1][1].endswith("(49 similar lines suppressed)")
