"""Behaviour of the per-tenant series registry (ingress.buffer.registry)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingress.buffer import SeriesRegistry

S = 1_000_000_000  # ns per second


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ids_are_compact_and_stable():
    reg = SeriesRegistry(1)
    a = reg.intern(0, "cpu.usage", (("core", "0"),))
    b = reg.intern(0, "cpu.usage", (("core", "1"),))
    c = reg.intern(0, "mem.used")
    assert (a, b, c) == (0, 1, 2)
    assert reg.intern(0, "cpu.usage", (("core", "0"),)) == a
    assert reg.count(0) == 3
    assert reg.key(0, b) == ("cpu.usage", (("core", "1"),))


def test_tag_order_and_form_do_not_matter():
    reg = SeriesRegistry(1)
    a = reg.intern(0, "disk.io", (("dev", "sda"), ("dir", "read")))
    assert reg.intern(0, "disk.io", (("dir", "read"), ("dev", "sda"))) == a
    assert reg.intern(0, "disk.io", {"dir": "read", "dev": "sda"}) == a
    assert reg.count(0) == 1


def test_tenants_have_separate_id_spaces():
    reg = SeriesRegistry(2)
    assert reg.intern(0, "a") == 0
    assert reg.intern(1, "b") == 0
    assert reg.intern(1, "a") == 1
    assert reg.key(0, 0) == ("a", ()) and reg.key(1, 0) == ("b", ())
    with pytest.raises(KeyError):
        reg.key(0, 1)
    with pytest.raises(IndexError, match="^t: "):
        reg.intern(2, "a")


@pytest.mark.parametrize("kwargs, word", [
    (dict(n_tenants=0), "n_tenants"),
    (dict(n_tenants=2, max_series=[5]), "max_series"),
    (dict(n_tenants=2, max_series=[5, 0]), r"max_series\[1\]"),
    (dict(n_tenants=1, ttl_s=0), "ttl_s"),
    (dict(n_tenants=2, names=["a"]), "names"),
])
def test_bad_construction_names_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SeriesRegistry(**kwargs)


# -- cardinality cap ----------------------------------------------------------------


def test_cap_refuses_new_series_and_counts(caplog):
    reg = SeriesRegistry(2, max_series=[2, 5], clock=FakeClock())
    assert reg.intern(0, "a") == 0 and reg.intern(0, "b") == 1
    with caplog.at_level(logging.WARNING, logger="ingress.buffer"):
        assert reg.intern(0, "c") == -1
        assert reg.intern(0, "d", (("x", "1"),)) == -1
    assert reg.intern(0, "a") == 0            # known series still resolve
    assert reg.refused(0) == 2 and reg.count(0) == 2
    assert reg.refused(1) == 0
    assert [reg.intern(1, f"m{i}") for i in range(5)] == [0, 1, 2, 3, 4]
    assert reg.max_series(0) == 2


def test_at_most_one_log_line_per_tenant_per_minute(caplog):
    clock = FakeClock()
    reg = SeriesRegistry(2, max_series=1, names=["acme", "beta"], clock=clock)
    reg.intern(0, "keep")
    reg.intern(1, "keep")
    with caplog.at_level(logging.WARNING, logger="ingress.buffer"):
        for i in range(5):
            reg.intern(0, f"new{i}")
            clock.now += 10
        assert len(caplog.records) == 1           # t = 0 .. 40 s
        reg.intern(1, "other")                    # another tenant has its own minute
        assert len(caplog.records) == 2
        clock.now = 1000.0 + 59.5
        reg.intern(0, "late")
        assert len(caplog.records) == 2
        clock.now = 1000.0 + 60.0
        reg.intern(0, "later")
        assert len(caplog.records) == 3
    first, other, third = (r.getMessage() for r in caplog.records)
    assert first.startswith("tenant acme: series limit 1 reached") and "new0{}" in first
    assert other.startswith("tenant beta:")
    # The third line reports what the silent minute refused: new1..new4, late, later.
    assert "refused 6 new series since the last report (7 in total)" in third
    assert all(r.name == "ingress.buffer" for r in caplog.records)


# -- touch, evict, quarantine, release ------------------------------------------------


def test_unseen_series_are_evicted_and_quarantined():
    reg = SeriesRegistry(1, ttl_s=600)
    ids = [reg.intern(0, f"m{i}", now_ns=0) for i in range(4)]
    reg.touch(0, np.array([1, 3, 3], np.uint32), 500 * S)
    assert reg.evict(599 * S) == {}
    out = reg.evict(600 * S)
    assert list(out) == [0]
    assert out[0].dtype == np.uint32 and out[0].tolist() == [0, 2]
    assert reg.count(0) == 2 and reg.quarantined(0) == 2
    # The key is kept for batches that still hold the id ...
    assert reg.key(0, ids[0]) == ("m0", ())
    # ... but interning the same key again gives a fresh id, not the quarantined one.
    again = reg.intern(0, "m0", now_ns=600 * S)
    assert again == 4
    assert reg.release() == 2
    assert reg.quarantined(0) == 0
    with pytest.raises(KeyError):
        reg.key(0, ids[2])
    # Released ids are reused.
    assert sorted([reg.intern(0, "n0"), reg.intern(0, "n1"), reg.intern(0, "n2")]) == [0, 2, 5]


def test_series_interned_without_time_get_a_full_ttl_from_the_next_evict():
    reg = SeriesRegistry(1, ttl_s=10)
    reg.intern(0, "a")
    assert reg.evict(1000 * S) == {}
    assert reg.evict(1009 * S) == {}
    assert reg.evict(1010 * S)[0].tolist() == [0]


def test_eviction_makes_room_under_the_cap():
    reg = SeriesRegistry(1, max_series=2, ttl_s=1)
    reg.intern(0, "a", now_ns=0)
    reg.intern(0, "b", now_ns=5 * S)
    assert reg.intern(0, "c", now_ns=5 * S) == -1
    reg.evict(2 * S)
    assert reg.intern(0, "c", now_ns=5 * S) == 2      # room, but id 0 is still quarantined


def test_touching_a_dead_id_does_not_resurrect_it():
    reg = SeriesRegistry(1, ttl_s=1)
    reg.intern(0, "a", now_ns=0)
    reg.evict(5 * S)
    reg.touch(0, np.array([0], np.uint32), 6 * S)
    assert reg.evict(100 * S) == {}
    assert reg.quarantined(0) == 1 and reg.count(0) == 0


def test_touch_refuses_negative_ids():
    reg = SeriesRegistry(1)
    reg.intern(0, "a")
    with pytest.raises(ValueError, match="^sids: negative id -1"):
        reg.touch(0, np.array([0, -1]), 5)


def test_release_upto_keeps_later_quarantines():
    reg = SeriesRegistry(2, ttl_s=1)
    reg.intern(0, "a", now_ns=0)
    reg.intern(1, "x", now_ns=0)
    reg.intern(0, "b", now_ns=10 * S)
    out = reg.evict(5 * S)
    assert {t: ids.tolist() for t, ids in out.items()} == {0: [0], 1: [0]}
    first = reg.epoch
    reg.evict(20 * S)                      # quarantines b (epoch first + 1)
    assert reg.quarantined(0) == 2
    assert reg.release(0, upto=first) == 1
    assert reg.quarantined(0) == 1 and reg.quarantined(1) == 1
    assert reg.key(0, 1) == ("b", ())      # still quarantined, still encodable
    assert reg.intern(0, "c") == 0         # only the released id is reused
    assert reg.release(upto=first) == 1    # tenant 1's epoch-`first` id
    assert reg.release() == 1


# -- dictionary ----------------------------------------------------------------------


def test_dictionary_is_a_dense_remap():
    reg = SeriesRegistry(1)
    for i in range(6):
        reg.intern(0, f"m{i}", (("k", str(i)),))
    sids = np.array([5, 2, 5, 5, 0, 2], np.uint32)
    series, index = reg.dictionary(0, sids)
    assert series == [("m0", {"k": "0"}), ("m2", {"k": "2"}), ("m5", {"k": "5"})]
    assert index.dtype == np.uint32 and index.tolist() == [2, 1, 2, 2, 0, 1]
    out = np.zeros(6, np.uint32)
    series2, index2 = reg.dictionary(0, sids, out=out)
    assert index2 is out and out.tolist() == index.tolist() and series2 == series
    # The scratch state is clean for the next call.
    series3, index3 = reg.dictionary(0, np.array([1], np.uint32))
    assert series3 == [("m1", {"k": "1"})] and index3.tolist() == [0]


def test_dictionary_of_nothing():
    reg = SeriesRegistry(1)
    series, index = reg.dictionary(0, np.empty(0, np.uint32))
    assert series == [] and index.size == 0


def test_dictionary_covers_quarantined_but_not_released_ids():
    reg = SeriesRegistry(1, ttl_s=1)
    reg.intern(0, "gone", now_ns=0)
    reg.intern(0, "here", now_ns=10 * S)
    reg.evict(5 * S)
    series, _ = reg.dictionary(0, np.array([0, 1], np.uint32))
    assert [name for name, _ in series] == ["gone", "here"]
    reg.release()
    with pytest.raises(ValueError, match="^sids: id 0 is not in use"):
        reg.dictionary(0, np.array([0, 1], np.uint32))
    with pytest.raises(ValueError, match="^sids: id 7 was never issued"):
        reg.dictionary(0, np.array([7], np.uint32))


def test_id_space_grows_past_the_initial_arrays():
    reg = SeriesRegistry(1, max_series=5000)
    ids = [reg.intern(0, f"m{i}", now_ns=0) for i in range(3000)]
    assert ids == list(range(3000))
    reg.touch(0, np.arange(3000, dtype=np.uint32), 1)
    series, index = reg.dictionary(0, np.array([2999, 0, 2999], np.uint32))
    assert series == [("m0", {}), ("m2999", {})] and index.tolist() == [1, 0, 1]


@settings(max_examples=100, deadline=None)
@given(n_ids=st.integers(1, 60), data=st.data())
def test_dictionary_matches_numpy_unique(n_ids, data):
    reg = SeriesRegistry(1)
    for i in range(n_ids):
        reg.intern(0, f"m{i}")
    sids = np.array(data.draw(st.lists(st.integers(0, n_ids - 1), max_size=200)), np.uint32)
    series, index = reg.dictionary(0, sids)
    uniq, inverse = np.unique(sids, return_inverse=True)
    assert [name for name, _ in series] == [f"m{i}" for i in uniq.tolist()]
    assert index.tolist() == inverse.tolist()


# -- encoded_dictionary: the dictionary section written from the registry's string ids ---------

def _encoded(reg, t, sids):
    from ingress._core._codec import encode_dictionary

    series, index = reg.dictionary(t, sids)
    return encode_dictionary(series), index


def test_encoded_dictionary_is_the_encoding_of_dictionary():
    reg = SeriesRegistry(2)
    for i in range(6):
        reg.intern(0, f"m{i}", (("k", str(i)), ("host", "a")))
    reg.intern(1, "other", ())
    sids = np.array([5, 2, 5, 5, 0, 2], np.uint32)
    data, n, index = reg.encoded_dictionary(0, sids)
    (want, wn), want_index = _encoded(reg, 0, sids)
    assert (data, n) == (want, wn) and n == 3 and index.tolist() == want_index.tolist()
    out = np.zeros(6, np.uint32)
    assert reg.encoded_dictionary(0, sids, out=out)[2] is out
    assert reg.encoded_dictionary(1, np.array([0], np.uint32))[:2] == _encoded(reg, 1, np.array([0]))[0]
    empty = reg.encoded_dictionary(0, np.empty(0, np.uint32))
    assert empty[:2] == (b"\x00", 0) and empty[2].size == 0


def test_encoded_dictionary_follows_release_and_reuse_of_ids():
    reg = SeriesRegistry(1, ttl_s=1)
    reg.intern(0, "gone", (("pid", "7"),), now_ns=0)
    reg.intern(0, "here", now_ns=10 * S)
    reg.evict(5 * S)
    both = np.array([0, 1], np.uint32)
    assert reg.encoded_dictionary(0, both)[:2] == _encoded(reg, 0, both)[0]  # quarantined: still there
    reg.release()
    with pytest.raises(ValueError, match="^sids: id 0 is not in use"):
        reg.encoded_dictionary(0, both)
    with pytest.raises(ValueError, match="^sids: id 9 was never issued"):
        reg.encoded_dictionary(0, np.array([9], np.uint32))
    assert reg.intern(0, "new", (("pid", "8"),), now_ns=20 * S) == 0  # the freed id, a new series
    data, n, _ = reg.encoded_dictionary(0, both)
    assert (data, n) == _encoded(reg, 0, both)[0]
    from ingress.wire import decode, encode

    payload = encode(
        "acme", "h", None, np.array([0, 1], np.uint32), np.array([1, 1], np.int64), np.array([1.0, 2.0]),
        dictionary=(data, n))
    assert decode(payload).series == [("new", {"pid": "8"}), ("here", {})]


def test_intern_refuses_a_name_that_cannot_be_encoded_and_changes_nothing():
    reg = SeriesRegistry(1)
    with pytest.raises(ValueError, match="name: .* is not encodable as UTF-8"):
        reg.intern(0, "bad\ud800")
    with pytest.raises(TypeError, match="tag 'k' value must be str"):
        reg.intern(0, "m", (("k", 1),))
    assert reg.count(0) == 0
    assert reg.intern(0, "good") == 0
