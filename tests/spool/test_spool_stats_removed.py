"""``stats_for`` (``ingress spool stats``) of a tenant the configuration no longer names.

``ingress spool stats`` passes the outputs of every *configured* tenant. A
tenant removed by a reload keeps its spool directory (and its ack ledgers)
until it is purged; it used to be measured against no output at all, so every
sample it ever spooled showed as pending even when every output had taken it.
Found by tests/sink_store/test_e2e.py.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st
from spool_helpers import T0, fill

from ingress.spool import Spool, TenantPolicy, stats_for

OUTPUTS = ("web", "bus")


def _open(d):
    return Spool(d, {"acme": TenantPolicy(), "gone": TenantPolicy()}, list(OUTPUTS), write_mb_s=None,
                 maintain_every_s=None, clock=lambda: T0)


def test_a_removed_tenant_whose_outputs_took_everything_has_nothing_pending(tmp_path):
    sp = _open(tmp_path)
    for t in ("acme", "gone"):
        for ref in fill(sp, t, 4, samples=5):
            for o in OUTPUTS:
                sp.ack(t, o, ref)
    sp.close()
    st_ = stats_for(tmp_path, {"acme": list(OUTPUTS)})  # "gone" is no longer configured
    assert st_["gone"]["samples_pending"] == 0 and st_["gone"]["batches_pending"] == 0, st_["gone"]
    assert set(st_["gone"]["pending_by_output"]) == set(OUTPUTS)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(acks=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=12),
       samples=st.integers(1, 50))
def test_a_removed_tenant_counts_pending_against_the_outputs_it_had(tmp_path_factory, acks, samples):
    """Over any pattern of acks, the removed tenant is measured as ``stats_for`` without outputs does:
    against the outputs that left ack ledgers on disk (an output that never took one of its
    batches left none); with none, everything it spooled is pending."""
    d = tmp_path_factory.mktemp("sp")
    sp = _open(d)
    refs = fill(sp, "gone", len(acks), samples=samples)
    for ref, per in zip(refs, acks):
        for o, done in zip(OUTPUTS, per):
            if done:
                sp.ack("gone", o, ref)
    sp.close()
    had = [i for i in range(len(OUTPUTS)) if any(per[i] for per in acks)]
    want = sum(samples for per in acks if not had or not all(per[i] for i in had))
    for named in ({"acme": list(OUTPUTS)}, {}, None):
        got = stats_for(d, named)["gone"]
        assert got["samples_pending"] == want, (named, got)
        assert set(got["pending_by_output"]) == {OUTPUTS[i] for i in had}, (named, got)
        for i in had:
            assert got["pending_by_output"][OUTPUTS[i]]["samples"] == samples * sum(not per[i] for per in acks)
    # A tenant the mapping names is still measured against exactly the outputs given.
    assert set(stats_for(d, {"gone": ["web"]})["gone"]["pending_by_output"]) == {"web"}
