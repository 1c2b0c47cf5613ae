import json
import os
import threading
import time

import pytest

from ingress.errors import PermanentError, RetryableError, TenantCheckError
from ingress.outputs.base import Output
from ingress.outputs.breaker import CircuitBreaker
from ingress.outputs.delivery import Delivery
from ingress.outputs.pair import first_line
from ingress.outputs.retry import Backoff
from ingress.outputs.validate import TenantChecker, TenantRule

from .fakes import FakeSpool, fill, wait_for


class ScriptedOutput(Output):
    """Answers each submit per ``behave(batch) -> None | Exception | 'hang'``, from a thread."""

    type = "fake"

    def __init__(self, name, behave=lambda b: None, tenants=None, needs_credential=False):
        super().__init__(name, tenants)
        self.behave = behave
        self.needs_credential = needs_credential
        self.lock = threading.Lock()
        self.calls = []  # (tenant, batch_id, monotonic time)
        self.delivered = []
        self.hung = []
        self.max_inflight = {}
        self.inflight = {}

    def submit(self, batch, done):
        with self.lock:
            self.calls.append((batch.tenant, batch.batch_id, time.monotonic()))
            n = self.inflight[batch.tenant] = self.inflight.get(batch.tenant, 0) + 1
            self.max_inflight[batch.tenant] = max(self.max_inflight.get(batch.tenant, 0), n)
        r = self.behave(batch)
        if r == "hang":
            with self.lock:
                self.hung.append((batch, done))
            return

        def finish():
            with self.lock:
                self.inflight[batch.tenant] -= 1
                if r is None:
                    self.delivered.append(batch.batch_id)
            done(batch, r)

        threading.Thread(target=finish, daemon=True).start()

    def release(self, err=None):
        with self.lock:
            hung, self.hung = self.hung, []
        for b, done in hung:
            with self.lock:
                self.inflight[b.tenant] -= 1
            done(b, err)


def mk(spool, outputs, tmp_path, tenants=("acme",), checker=None, **kw):
    kw.setdefault("backoff", lambda: Backoff(base_s=0.01, cap_s=0.05))
    kw.setdefault("idle_poll_s", 0.05)
    d = Delivery(spool, outputs, checker, tenants=tenants, data_dir=tmp_path, host="web-1", **kw)
    d.start()
    return d


def test_delivers_everything_and_acks_in_the_spool(tmp_path):
    out = ScriptedOutput("o1")
    sp = FakeSpool(["o1"])
    ids = fill(sp, "acme", 10, samples=3)
    d = mk(sp, [out], tmp_path)
    try:
        assert wait_for(lambda: not sp.unacked("acme", "o1"))
    finally:
        assert d.stop(5) == 0
    assert sorted(out.delivered) == sorted(ids)
    st = d.stats()["acme"]["o1"]
    assert st["sent_batches"] == 10 and st["sent_samples"] == 30
    assert st["retries"] == 0 and st["dead_letters"] == 0 and st["in_flight"] == 0
    assert st["latency_p50_s"] is not None and st["latency_p99_s"] >= st["latency_p50_s"]
    assert st["state"] == "ok"
    assert out.max_inflight["acme"] <= 4


def test_window_bounds_in_flight(tmp_path):
    out = ScriptedOutput("o1", behave=lambda b: "hang")
    sp = FakeSpool(["o1"])
    fill(sp, "acme", 20)
    d = mk(sp, [out], tmp_path, window=3)
    try:
        assert wait_for(lambda: len(out.hung) == 3)
        time.sleep(0.2)
        assert len(out.calls) == 3
        assert d.stats()["acme"]["o1"]["in_flight"] == 3
        out.release()  # three acknowledged, the next three hang again
        assert wait_for(lambda: len(sp.unacked("acme", "o1")) == 17 and len(out.hung) == 3)
    finally:
        d.stop(0.5)
        out.release()


def test_retryable_failure_is_retried_until_it_succeeds(tmp_path):
    fails = {"n": 3}

    def behave(b):
        if fails["n"] > 0:
            fails["n"] -= 1
            return RetryableError("HTTP 503: busy\nmore detail")
        return None

    out = ScriptedOutput("o1", behave)
    sp = FakeSpool(["o1"])
    ids = fill(sp, "acme", 2)
    d = mk(sp, [out], tmp_path, window=1)
    try:
        assert wait_for(lambda: not sp.unacked("acme", "o1"))
    finally:
        d.stop(5)
    st = d.stats()["acme"]["o1"]
    assert st["retries"] == 3 and st["failures"] == 3 and st["sent_batches"] == 2
    assert st["last_error"] == "HTTP 503: busy"
    # The oldest batch is retried first: order kept.
    assert [a[2] for a in sp.ack_log] == ids
    assert [c[1] for c in out.calls][:4] == [ids[0]] * 4


def test_retry_after_is_honoured(tmp_path):
    seen = []

    def behave(b):
        seen.append(time.monotonic())
        return RetryableError("429", retry_after=0.4) if len(seen) == 1 else None

    out = ScriptedOutput("o1", behave)
    sp = FakeSpool(["o1"])
    fill(sp, "acme", 1)
    d = mk(sp, [out], tmp_path)
    try:
        assert wait_for(lambda: not sp.unacked("acme", "o1"))
    finally:
        d.stop(5)
    assert len(seen) == 2 and seen[1] - seen[0] >= 0.4


def test_permanent_error_goes_to_dead_letters_and_leaves_the_spool(tmp_path):
    bad = {}

    def behave(b):
        return PermanentError("HTTP 401: unknown key for tenant acme\n<html>") if b.batch_id in bad else None

    out = ScriptedOutput("o1", behave)
    sp = FakeSpool(["o1"])
    ids = fill(sp, "acme", 4)
    bad[ids[1]] = True
    d = mk(sp, [out], tmp_path)
    try:
        assert wait_for(lambda: not sp.unacked("acme", "o1"))
    finally:
        d.stop(5)
    folder = tmp_path / "deadletter" / "acme" / "o1"
    assert sorted(p.name for p in folder.iterdir()) == [ids[1].hex() + ".batch", ids[1].hex() + ".json"]
    assert (folder / (ids[1].hex() + ".batch")).read_bytes() == b"payload-acme-1"
    reason = json.loads((folder / (ids[1].hex() + ".json")).read_text())
    assert reason["reason"] == "HTTP 401: unknown key for tenant acme"
    assert reason["tenant"] == "acme" and reason["output"] == "o1" and reason["batch_id"] == ids[1].hex()
    assert reason["error"] == "PermanentError" and reason["host"] == "web-1"
    st = d.stats()["acme"]["o1"]
    assert st["dead_letters"] == 1 and st["sent_batches"] == 3 and st["retries"] == 0
    assert d.breaker("acme", "o1").snapshot()["failures"] == 0


def test_dead_letter_write_failure_keeps_batch(tmp_path):
    out = ScriptedOutput("o1", lambda b: PermanentError("HTTP 400: bad"))
    sp = FakeSpool(["o1"])
    fill(sp, "acme", 1)
    (tmp_path / "deadletter").write_text("not a directory")
    d = mk(sp, [out], tmp_path)
    try:
        assert wait_for(lambda: len(out.calls) >= 2)
    finally:
        d.stop(1)
    assert len(sp.unacked("acme", "o1")) == 1
    st = d.stats()["acme"]["o1"]
    assert st["dead_letters"] == 0 and "dead letter not written" in st["last_error"]


def test_breaker_opens_and_probes_one_at_a_time(tmp_path):
    state = {"ok": False}
    out = ScriptedOutput("o1", lambda b: None if state["ok"] else RetryableError("connection refused"))
    sp = FakeSpool(["o1"])
    fill(sp, "acme", 5)
    d = mk(sp, [out], tmp_path, window=1, backoff=lambda: Backoff(base_s=0.001, cap_s=0.001),
           breaker_factory=lambda: CircuitBreaker(failure_threshold=3, reset_timeout_s=0.3))
    try:
        assert wait_for(lambda: d.breaker("acme", "o1").snapshot()["times_opened"] >= 1)
        n = len(out.calls)
        assert n == 3  # nothing sent while open
        assert d.stats()["acme"]["o1"]["state"] == "open"
        assert any("circuit breaker open" in r for r in d.problems())
        # After the reset time one probe goes out (and fails: opens again).
        assert wait_for(lambda: len(out.calls) == 4)
        assert wait_for(lambda: d.breaker("acme", "o1").snapshot()["times_opened"] == 2)
        state["ok"] = True
        assert wait_for(lambda: not sp.unacked("acme", "o1"))
        assert d.breaker("acme", "o1").state == "closed"
        assert d.problems() == []
    finally:
        d.stop(5)


def test_tenant_check_failure_holds_batches_in_spool(tmp_path, monkeypatch):
    monkeypatch.delenv("ACME_KEY", raising=False)
    def acme_key():  # what ingress.tenants.Tenant.credential does for api_key_env
        if not os.environ.get("ACME_KEY"):
            raise TenantCheckError("credential_missing", "acme", "environment variable ACME_KEY is not set")
        return os.environ["ACME_KEY"]

    checker = TenantChecker({"acme": TenantRule(credential=acme_key),
                             "off": TenantRule(enabled=False)})
    out = ScriptedOutput("o1", needs_credential=True)
    sp = FakeSpool(["o1"])
    fill(sp, "acme", 2)
    fill(sp, "off", 2)
    fill(sp, "ghost", 1)
    d = mk(sp, [out], tmp_path, tenants=("acme", "off", "ghost"), checker=checker, check_retry_s=0.05)
    try:
        assert wait_for(lambda: d.stats()["acme"]["o1"]["tenant_check_failures"]["credential_missing"] >= 2)
        assert wait_for(lambda: d.stats()["off"]["o1"]["tenant_check_failures"]["tenant_disabled"] >= 1)
        assert wait_for(lambda: d.stats()["ghost"]["o1"]["tenant_check_failures"]["tenant_unknown"] >= 1)
        assert out.calls == []
        assert len(sp.unacked("acme", "o1")) == 2
        assert d.stats()["acme"]["o1"]["state"] == "blocked"
        assert "ACME_KEY is not set" in d.stats()["acme"]["o1"]["last_error"]
        assert checker.failures()["acme"]["credential_missing"] >= 2
        monkeypatch.setenv("ACME_KEY", "k")
        assert wait_for(lambda: not sp.unacked("acme", "o1"))
        assert len(sp.unacked("off", "o1")) == 2 and len(sp.unacked("ghost", "o1")) == 1
        assert d.stats()["acme"]["o1"]["state"] == "ok"
    finally:
        d.stop(5)


def test_hung_tenant_does_not_delay_other_tenants(tmp_path):
    out = ScriptedOutput("o1", lambda b: "hang" if b.tenant == "slow" else None)
    other = ScriptedOutput("o2", lambda b: "hang" if b.tenant == "slow" else None)
    sp = FakeSpool(["o1", "o2"])
    fill(sp, "slow", 10)
    d = mk(sp, [out, other], tmp_path, tenants=("slow", "fast"))
    try:
        assert wait_for(lambda: len(out.hung) == 4 and len(other.hung) == 4)
        ids = fill(sp, "fast", 20)
        d.notify("fast")
        assert wait_for(lambda: not sp.unacked("fast", "o1") and not sp.unacked("fast", "o2"))
        assert set(ids) <= set(out.delivered) and set(ids) <= set(other.delivered)
        assert len(sp.unacked("slow", "o1")) == 10
    finally:
        d.stop(0.2)
        out.release()
        other.release()


def test_output_serves_only_its_tenants(tmp_path):
    o1 = ScriptedOutput("o1", tenants=frozenset({"acme"}))
    o2 = ScriptedOutput("o2")
    sp = FakeSpool(["o1", "o2"])
    fill(sp, "acme", 1)
    fill(sp, "zeta", 1)
    d = mk(sp, [o1, o2], tmp_path, tenants=("acme", "zeta"))
    try:
        assert sorted(d.pairs()) == [("acme", "o1"), ("acme", "o2"), ("zeta", "o2")]
        assert wait_for(lambda: len(o2.delivered) == 2 and len(o1.delivered) == 1)
    finally:
        d.stop(5)
    assert [c[0] for c in o1.calls] == ["acme"]


def test_restart_resumes_from_spool(tmp_path):
    out = ScriptedOutput("o1", lambda b: "hang")
    sp = FakeSpool(["o1"])
    ids = fill(sp, "acme", 6)
    d = mk(sp, [out], tmp_path, window=2)
    assert wait_for(lambda: len(out.hung) == 2)
    assert d.stop(0.1) == 2
    out.release()  # late acknowledgements after stop are ignored: the spool keeps them
    assert len(sp.unacked("acme", "o1")) == 6
    out2 = ScriptedOutput("o1")
    d2 = mk(sp, [out2], tmp_path)
    try:
        assert wait_for(lambda: not sp.unacked("acme", "o1"))
    finally:
        d2.stop(5)
    assert sorted(out2.delivered) == sorted(ids)


def test_submit_that_raises_counts_as_retryable(tmp_path):
    class Boom(ScriptedOutput):
        n = 0

        def submit(self, batch, done):
            Boom.n += 1
            if Boom.n == 1:
                raise RuntimeError("client exploded")
            super().submit(batch, done)

    out = Boom("o1")
    sp = FakeSpool(["o1"])
    fill(sp, "acme", 1)
    d = mk(sp, [out], tmp_path)
    try:
        assert wait_for(lambda: not sp.unacked("acme", "o1"))
    finally:
        d.stop(5)
    assert d.stats()["acme"]["o1"]["retries"] == 1


def test_done_called_twice_counts_once(tmp_path):
    class Twice(ScriptedOutput):
        def submit(self, batch, done):
            done(batch, None)
            done(batch, RetryableError("late"))

    out = Twice("o1")
    sp = FakeSpool(["o1"])
    fill(sp, "acme", 3)
    d = mk(sp, [out], tmp_path)
    try:
        assert wait_for(lambda: not sp.unacked("acme", "o1"))
    finally:
        d.stop(5)
    st = d.stats()["acme"]["o1"]
    assert st["sent_batches"] == 3 and st["retries"] == 0
    assert len(sp.ack_log) == 3


def test_first_line():
    assert first_line(PermanentError("\n  HTTP 400: x \nmore")) == "HTTP 400: x"
    assert first_line(RuntimeError()) == "RuntimeError"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="window=0"):
        Delivery(FakeSpool([]), [], None, tenants=[], data_dir=tmp_path, window=0)
    with pytest.raises(ValueError, match="unique"):
        Delivery(FakeSpool([]), [ScriptedOutput("a"), ScriptedOutput("a")], None, tenants=[], data_dir=tmp_path)


def test_tenant_check_error_from_an_output_holds_the_batch(tmp_path):
    state = {"bad": True}
    out = ScriptedOutput("o1", lambda b: TenantCheckError("credential_empty", "acme", "key file is empty")
                         if state["bad"] else None)
    sp = FakeSpool(["o1"])
    fill(sp, "acme", 2)
    d = mk(sp, [out], tmp_path, check_retry_s=0.05)
    try:
        assert wait_for(lambda: d.stats()["acme"]["o1"]["tenant_check_failures"].get("credential_empty", 0) >= 2)
        assert len(sp.unacked("acme", "o1")) == 2
        assert d.breaker("acme", "o1").snapshot()["failures"] == 0  # not the endpoint's fault
        state["bad"] = False
        assert wait_for(lambda: not sp.unacked("acme", "o1"))
    finally:
        d.stop(5)


# -- set_tenants (configuration reload) -----------------------------------------------


def test_set_tenants_adds_and_retires_pairs_without_touching_the_others(tmp_path):
    out = ScriptedOutput("o1")
    sp = FakeSpool(["o1"])
    fill(sp, "acme", 5)
    d = mk(sp, [out], tmp_path, tenants=("acme", "globex"))
    try:
        assert wait_for(lambda: not sp.unacked("acme", "o1"))
        acme_worker = d._pairs[("acme", "o1")].thread
        added, removed = d.set_tenants(["acme", "initech"], timeout=5)
        assert added == [("initech", "o1")] and removed == [("globex", "o1")]
        assert sorted(d.pairs()) == [("acme", "o1"), ("initech", "o1")]
        assert d._pairs[("acme", "o1")].thread is acme_worker and acme_worker.is_alive()
        fill(sp, "initech", 3)
        fill(sp, "globex", 2)  # no pair any more: stays in the spool
        fill(sp, "acme", 2)
        d.notify()
        assert wait_for(lambda: not sp.unacked("initech", "o1") and not sp.unacked("acme", "o1"))
        time.sleep(0.2)
        assert len(sp.unacked("globex", "o1")) == 2
    finally:
        assert d.stop(5) == 0


def test_set_tenants_lets_a_retired_pair_finish_what_is_in_flight(tmp_path):
    out = ScriptedOutput("o1", behave=lambda b: "hang")
    sp = FakeSpool(["o1"])
    fill(sp, "globex", 3)
    d = mk(sp, [out], tmp_path, tenants=("acme", "globex"), window=2)
    try:
        assert wait_for(lambda: len(out.hung) == 2)
        done = threading.Event()
        threading.Thread(target=lambda: (d.set_tenants(["acme"], timeout=10), done.set()), daemon=True).start()
        time.sleep(0.2)
        assert not done.is_set()  # waits for the two in flight
        out.behave = lambda b: None
        out.release()
        assert done.wait(10)
        assert len(sp.unacked("globex", "o1")) == 1  # the third was never sent: still spooled
        assert len(out.calls) == 2  # and nothing was sent twice
    finally:
        d.stop(1)


def test_set_tenants_follows_the_outputs_serves(tmp_path):
    out = ScriptedOutput("o1", tenants=frozenset({"acme", "globex"}))
    d = mk(FakeSpool(["o1"]), [out], tmp_path, tenants=("acme", "globex"))
    try:
        out.tenants = frozenset({"acme"})
        added, removed = d.set_tenants(["acme", "globex"], timeout=1)
        assert added == [] and removed == [("globex", "o1")]
    finally:
        d.stop(1)
