"""The spool against a plain in-memory model: append, ack (any order), reopen, crash, torn tail."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from spool_helpers import T0, bid

from ingress.security.crypto import OVERHEAD
from ingress.spool import RecordRef, Spool, TenantPolicy
from ingress.spool.segment import REC_HEADER_SIZE

TENANTS = {"plain": TenantPolicy(), "sealed": TenantPolicy(encrypt=True)}
OUTPUTS = ("kafka", "http")
tenants = st.sampled_from(sorted(TENANTS))
outputs = st.sampled_from(OUTPUTS)


@dataclass
class Rec:
    id: int
    payload: bytes
    samples: int
    ref: RecordRef
    acked: set = field(default_factory=set)


class SpoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ingress-spool-sm-"))
        self.sp = self._open()
        self.model: dict[str, list[Rec]] = {t: [] for t in TENANTS}
        self.last: dict[str, Rec | None] = dict.fromkeys(TENANTS)
        self.corrupt = dict.fromkeys(TENANTS, 0)
        self.next_id = 0

    def _open(self) -> Spool:
        # 1 KiB segments: rotation and deletion happen every few steps
        return Spool(self.dir, TENANTS, OUTPUTS, write_mb_s=None, segment_bytes=1024, clock=lambda: T0,
                     maintain_every_s=None)

    @rule(t=tenants, size=st.integers(0, 400), samples=st.integers(0, 5000))
    def append(self, t, size, samples):
        i = self.next_id
        self.next_id += 1
        data = os.urandom(size)
        ref = self.sp.append(t, bid(i), data, samples, T0)
        rec = Rec(i, data, samples, ref)
        self.model[t].append(rec)
        self.last[t] = rec

    @rule(t=tenants, o=outputs, data=st.data())
    def ack(self, t, o, data):
        cands = [r for r in self.model[t] if o not in r.acked]
        if not cands:
            return
        r = data.draw(st.sampled_from(cands))
        assert self.sp.ack(t, o, r.ref) is True
        r.acked.add(o)
        if r.acked == set(OUTPUTS):
            self.model[t].remove(r)

    @rule(t=tenants, o=outputs, data=st.data())
    def ack_again(self, t, o, data):
        cands = [r for r in self.model[t] if o in r.acked]
        if cands:
            assert self.sp.ack(t, o, data.draw(st.sampled_from(cands)).ref) is False

    @rule()
    def reopen(self):
        self.sp.close()
        self.sp = self._open()  # loss counters are persisted: a reopen keeps them

    @rule()
    def crash(self):
        self.sp._abandon()
        self.sp = self._open()

    @rule(t=tenants, cut=st.integers(0, 1 << 16))
    def crash_tearing_the_last_record(self, t, cut):
        rec = self.last[t]
        if rec is None or rec not in self.model[t]:
            return
        path = self.dir / "spool" / t / f"{rec.ref.segment:020d}.seg"
        rec_len = REC_HEADER_SIZE + len(rec.payload) + (OVERHEAD if TENANTS[t].encrypt else 0)
        end = rec.ref.offset + rec_len
        if not path.exists() or path.stat().st_size != end:
            return
        self.sp._abandon()
        keep = rec.ref.offset + cut % rec_len  # somewhere inside the record, maybe at its start
        os.truncate(path, keep)
        self.model[t].remove(rec)
        self.last[t] = None
        self.sp = self._open()
        self.corrupt[t] += 1 if keep > rec.ref.offset else 0  # cumulative, survives later reopens

    @invariant()
    def pending_matches_the_model(self):
        for t in TENANTS:
            for o in OUTPUTS:
                want = [r for r in self.model[t] if o not in r.acked]
                got = self.sp.pending(t, o, limit=1 << 20)
                assert [g.batch_id for g in got] == [bid(r.id) for r in want]
                assert [g.payload for g in got] == [r.payload for r in want]
                assert [g.ref for g in got] == [r.ref for r in want]
                assert [g.sample_count for g in got] == [r.samples for r in want]
            paged, cursor = [], None
            while True:
                page = self.sp.pending(t, OUTPUTS[0], limit=3, after=cursor)
                if not page:
                    break
                paged.extend(page)
                cursor = page[-1].ref
            assert [p.ref for p in paged] == [r.ref for r in self.model[t] if OUTPUTS[0] not in r.acked]
            s = self.sp.stats()[t]
            assert s["batches_pending"] == len(self.model[t])
            assert s["samples_pending"] == sum(r.samples for r in self.model[t])
            assert s["corrupt_records"] == self.corrupt[t]
            assert s["dropped_batches"] == 0

    def teardown(self):
        self.sp._abandon()
        shutil.rmtree(self.dir, ignore_errors=True)


SpoolMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow])
TestSpoolAgainstModel = SpoolMachine.TestCase
