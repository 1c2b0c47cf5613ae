"""The spool reconfigured while open (live reload): tenants added and dropped, outputs re-routed,
policies changed; checked against a model and against what a reopen (a restart) computes."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from spool_helpers import T0, FakeClock, bid, fill, ids, payload

from ingress.errors import SpoolError
from ingress.spool import Spool, TenantPolicy

ALL_OUTPUTS = ("a", "b", "c")
POLICY = TenantPolicy(max_bytes=8 << 20, retention_s=86400.0)
SEG = 16 << 10  # small segments: several per run, so whole segments get deleted


class Rec:
    def __init__(self, i: int, ref, life: int) -> None:
        self.id, self.ref, self.life = i, ref, life
        self.acked: set[str] = set()
        self.may_be_gone = False  # once acknowledged by every output of its tenant, it may be deleted


class ReconfigureMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ingress-spool-reconf-"))
        self.outputs: tuple[str, ...] = ("a",)
        self.sp = self._open()
        self.recs: list[Rec] = []
        self.n = 0
        self.life = 0  # refs are only good within one open (a reopen may reuse a deleted segment's number)

    def _open(self) -> Spool:
        return Spool(self.dir, {"t": POLICY}, {"t": self.outputs}, write_mb_s=None, maintain_every_s=None,
                     clock=FakeClock(), segment_bytes=SEG)

    def _settle(self) -> None:
        if self.outputs:
            for r in self.recs:
                if set(self.outputs) <= r.acked:
                    r.may_be_gone = True

    @rule(k=st.integers(1, 6))
    def append(self, k):
        for _ in range(k):
            self.recs.append(Rec(self.n, self.sp.append("t", bid(self.n), payload(self.n, 2000), 3, T0), self.life))
            self.n += 1

    @rule(data=st.data())
    def ack(self, data):
        live = [r for r in self.recs if r.life == self.life]
        if not self.outputs or not live:
            return
        o = data.draw(st.sampled_from(self.outputs))
        r = data.draw(st.sampled_from(live))
        self.sp.ack("t", o, r.ref)
        r.acked.add(o)
        self._settle()

    @rule(outs=st.lists(st.sampled_from(ALL_OUTPUTS), unique=True, max_size=3))
    def set_outputs(self, outs):
        self.outputs = tuple(outs)
        self.sp.set_outputs("t", self.outputs)
        self._settle()

    @rule()
    def reopen(self):
        self.sp.close()
        self.sp = self._open()
        self.life += 1

    @invariant()
    def pending_matches_the_model(self):
        st_ = self.sp.stats()["t"]
        assert set(st_["pending_by_output"]) == set(self.outputs)
        for o in self.outputs:
            got = set(ids(self.sp.pending("t", o, limit=10_000)))
            must = {r.id for r in self.recs if o not in r.acked and not r.may_be_gone}
            may = {r.id for r in self.recs if o not in r.acked}
            assert must <= got <= may, (o, sorted(must - got), sorted(got - may))
            assert st_["pending_by_output"][o] == {"batches": len(got), "samples": 3 * len(got)}

    def teardown(self):
        self.sp.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestReconfigure = ReconfigureMachine.TestCase
TestReconfigure.settings = settings(max_examples=60, stateful_step_count=25, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])


def test_set_outputs_matches_a_restart(tmp_path):
    """An output removed and brought back resumes from its ledger, as a restart with it would."""
    sp = Spool(tmp_path, {"t": POLICY}, {"t": ("a", "b")}, write_mb_s=None, maintain_every_s=None, segment_bytes=SEG,
               clock=FakeClock())
    refs = fill(sp, "t", 40, size=2000)
    for r in refs[:25]:
        sp.ack("t", "b", r)
    sp.set_outputs("t", ("a",))
    assert set(sp.stats()["t"]["pending_by_output"]) == {"a"}
    with pytest.raises(SpoolError, match="does not serve"):
        sp.pending("t", "b")
    sp.set_outputs("t", ("a", "b", "c"))
    live = {o: ids(sp.pending("t", o, limit=100)) for o in "abc"}
    live_stats = sp.stats()["t"]
    sp.close()
    sp = Spool(tmp_path, {"t": POLICY}, {"t": ("a", "b", "c")}, write_mb_s=None, maintain_every_s=None, clock=FakeClock())
    assert {o: ids(sp.pending("t", o, limit=100)) for o in "abc"} == live
    assert live["b"] == list(range(25, 40)) and live["c"] == list(range(40)) == live["a"]
    assert sp.stats()["t"]["pending_by_output"] == live_stats["pending_by_output"]
    sp.close()


def test_add_tenant_while_open_and_drop_it(tmp_path):
    sp = Spool(tmp_path, {"t": POLICY}, {"t": ("a",)}, write_mb_s=None, maintain_every_s=None, clock=FakeClock())
    fill(sp, "t", 3)
    with pytest.raises(SpoolError, match="no spool"):
        sp.append("new", bid(1), payload(1), 1, T0)
    assert sp.add_tenant("new", TenantPolicy(encrypt=True), ("a", "b")) is None
    fill(sp, "new", 5, samples=7)
    assert sp.stats()["new"]["pending_by_output"] == {"a": {"batches": 5, "samples": 35},
                                                      "b": {"batches": 5, "samples": 35}}
    assert (tmp_path / "keys" / "new.key").is_file()  # encrypting: its key was created
    assert sp.drop_tenant("new") == (5, 35)
    assert not (tmp_path / "spool" / "new").exists() and "new" not in sp.tenants
    assert ids(sp.pending("t", "a")) == [0, 1, 2]  # the other tenant untouched
    sp.close()


def test_add_tenant_that_cannot_be_opened_is_held_and_others_run(tmp_path):
    sp = Spool(tmp_path, {"t": POLICY}, {"t": ("a",)}, write_mb_s=None, maintain_every_s=None, clock=FakeClock())
    (tmp_path / "spool" / "bad").mkdir()
    (tmp_path / "spool" / "bad" / "counters.json").mkdir()  # a directory where a file belongs
    reason = sp.add_tenant("bad", POLICY, ("a",))
    assert reason and "counters.json" in reason and "bad" in sp.held
    fill(sp, "t", 2)
    assert ids(sp.pending("t", "a")) == [0, 1]
    sp.close()


def test_set_policy_smaller_quota_applies_at_once_and_is_counted(tmp_path):
    drops = []
    sp = Spool(tmp_path, {"t": TenantPolicy(max_bytes=1 << 20)}, {"t": ("a",)}, write_mb_s=None,
               maintain_every_s=None, on_drop=lambda *a: drops.append(a), clock=FakeClock())
    fill(sp, "t", 100, size=2000)
    sp.set_policy("t", TenantPolicy(max_bytes=64 << 10))
    st_ = sp.stats()["t"]
    assert st_["bytes"] <= 64 << 10 and st_["dropped_batches"] > 0 and drops
    assert st_["dropped_batches"] + st_["batches_pending"] == 100
    sp.set_policy("t", TenantPolicy(max_bytes=64 << 10, encrypt=True))  # sealed from now on
    fill(sp, "t", 2, start=100, size=2000)
    assert ids(sp.pending("t", "a", limit=1000))[-2:] == [100, 101]
    sp.close()


@pytest.mark.parametrize("call", ["add_tenant", "set_outputs"])
def test_bad_arguments_are_refused_without_touching_the_spool(tmp_path_factory, call):
    from hypothesis import given

    @settings(max_examples=50, deadline=None)
    @given(tid=st.text(max_size=70), outs=st.lists(st.text(max_size=5), max_size=3))
    def check(tid, outs):
        d = tmp_path_factory.mktemp("bad")
        sp = Spool(d, {"t": POLICY}, {"t": ("a",)}, write_mb_s=None, maintain_every_s=None, clock=FakeClock())
        try:
            before = sorted(os.listdir(d / "spool"))
            try:
                if call == "add_tenant":
                    sp.add_tenant(tid, POLICY, outs)
                else:
                    sp.set_outputs(tid, outs)
            except (ValueError, SpoolError):
                assert sorted(os.listdir(d / "spool")) == before
            if tid == "t":
                sp.set_outputs("t", ("a",))
            fill(sp, "t", 1)
            assert ids(sp.pending("t", "a")) == [0]
        finally:
            sp.close()

    check()
