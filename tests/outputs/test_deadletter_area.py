"""The dead-letter area: size cap and age limit per tenant, counted and reported; listing never
skips a damaged entry; files 0600 and directories 0700."""
import json
import os
import stat

from hypothesis import given, settings, strategies as st

from ingress.outputs import deadletter as dl


def put(data_dir, tenant, output, size, when, i):
    bid = (b"%016d" % i)[:16]
    dl.write(data_dir, tenant, output, bid, b"x" * size,
             {"batch_id": bid.hex(), "tenant": tenant, "output": output, "reason": "HTTP 400: no",
              "error": "HttpPermanentError", "time": when, "sample_count": 3, "encrypted": False})
    return bid.hex()


def test_cap_and_age_drop_the_oldest_count_it_and_report_it(tmp_path):
    now = 1_000_000.0
    old = put(tmp_path, "acme", "web", 100, now - 5000, 0)      # past the age limit
    a = put(tmp_path, "acme", "web", 100, now - 30, 1)          # oldest within the age: goes for the cap
    b = put(tmp_path, "acme", "kafka", 100, now - 20, 2)
    c = put(tmp_path, "acme", "web", 100, now - 10, 3)
    other = put(tmp_path, "globex", "web", 1000, now - 9000, 4)  # another tenant: untouched
    seen = []
    area = dl.Area(tmp_path, {"acme": (250, 3600)}, on_drop=lambda d, why: seen.append((d.batch_id, why)))
    gone = area.enforce("acme", force=True, now=now)
    assert [d.batch_id for d in gone] == [old, a]
    assert [x[0] for x in seen] == [old, a] and "age limit" in seen[0][1] and "cap" in seen[1][1]
    left = dl.scan(tmp_path, "acme")
    assert [d.batch_id for d in left] == [b, c] and sum(d.size for d in left) <= 250
    assert dl.counters(tmp_path, "acme") == {"dropped": 2, "dropped_bytes": 200}
    assert [d.batch_id for d in dl.scan(tmp_path, "globex")] == [other]
    assert dl.usage(tmp_path, "acme") == {"count": 2, "bytes": 200, "replay_queued": 0, "dropped": 2}


def test_files_private_and_a_damaged_entry_still_listed(tmp_path):
    bid = put(tmp_path, "acme", "web", 10, 123.0, 0)
    root = tmp_path / "deadletter"
    for p in (root, root / "acme", root / "acme" / "web"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700
    for p in (root / "acme" / "web").iterdir():
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    (root / "acme" / "web" / f"{bid}.json").write_bytes(b"\xff not json")
    [d] = dl.scan(tmp_path)
    assert d.batch_id == bid and d.reason == "(metadata unreadable)" and d.size == 10


def test_write_past_the_cap_applies_it_at_once(tmp_path):
    area = dl.Area(tmp_path, {"acme": (250, 0)})
    for i in range(6):
        area.write("acme", "web", (b"%016d" % i)[:16], b"y" * 100, {"time": 1000.0 + i})
    assert sum(d.size for d in dl.scan(tmp_path, "acme")) <= 250
    assert dl.counters(tmp_path, "acme")["dropped"] == 4


entries = st.lists(st.tuples(st.integers(1, 500), st.floats(0, 10_000)), max_size=20)


@settings(max_examples=60, deadline=None)
@given(entries, st.integers(0, 3000), st.sampled_from([0.0, 100.0, 5000.0]))
def test_any_area_ends_under_its_limits_keeping_the_newest(tmp_path_factory, items, cap, max_age):
    """Whatever is on disk, after enforcement the area is within the cap and the age limit, what
    was dropped was older than what was kept (cap) or too old (age), and the counter says how many."""
    d = tmp_path_factory.mktemp("dl")
    now = 20_000.0
    ids = {put(d, "acme", "web", size, now - age, i): (size, age) for i, (size, age) in enumerate(items)}
    gone = dl.Area(d, {"acme": (cap, max_age)}).enforce("acme", force=True, now=now)
    left = dl.scan(d, "acme")
    assert {x.batch_id for x in left} | {x.batch_id for x in gone} == set(ids)
    if cap:
        assert sum(x.size for x in left) <= cap
    if max_age:
        assert all(now - x.time <= max_age for x in left)
    for g in gone:
        too_old = max_age and now - g.time > max_age
        assert too_old or all(g.time <= x.time for x in left)
    assert dl.counters(d, "acme")["dropped"] == len(gone)
