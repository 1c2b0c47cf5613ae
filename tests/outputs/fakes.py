"""Test doubles shared by the unit and integration tests."""
from __future__ import annotations

import os
import threading
import time


class SpoolRecord:
    def __init__(self, ref, batch_id, payload, sample_count):
        self.ref, self.batch_id, self.payload, self.sample_count = ref, batch_id, payload, sample_count


class FakeSpool:
    """In-memory stand-in for ingress.spool.Spool: pending/ack per (tenant, output)."""

    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.lock = threading.Lock()
        self.records = {}  # tenant -> list of SpoolRecord
        self.acked = {}  # (tenant, output) -> set of refs
        self.ack_log = []  # (tenant, output, batch_id) in ack order
        self.seq = 0

    def append(self, tenant, batch_id, payload, sample_count, first_ts_ns=0):
        with self.lock:
            self.seq += 1
            self.records.setdefault(tenant, []).append(SpoolRecord(self.seq, batch_id, payload, sample_count))
            return self.seq

    def pending(self, tenant, output, limit=None):
        with self.lock:
            done = self.acked.get((tenant, output), set())
            recs = [r for r in self.records.get(tenant, []) if r.ref not in done]
        return iter(recs[:limit] if limit else recs)

    def ack(self, tenant, output, ref):
        with self.lock:
            self.acked.setdefault((tenant, output), set()).add(ref)
            bid = next(r.batch_id for r in self.records[tenant] if r.ref == ref)
            self.ack_log.append((tenant, output, bid))

    def unacked(self, tenant, output):
        return list(self.pending(tenant, output))


def fill(spool, tenant, n, samples=2):
    ids = []
    for i in range(n):
        bid = os.urandom(16)
        spool.append(tenant, bid, b"payload-" + tenant.encode() + b"-%d" % i, samples)
        ids.append(bid)
    return ids


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()
