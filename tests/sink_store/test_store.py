"""ClickHouseStore on the embedded engine: schema, migrations, exactly-once, retention, isolation."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ingress import wire
from ingress.errors import ConfigError
from ingress.sink_store import schema
from ingress.sink_store.clickhouse import BadBatch, ClickHouseStore
from ingress.sink_store.query import Query, run

from sink_store.conftest import make_batch


def test_migrations_apply_once_and_record_the_version(store, store_url):
    assert store.schema_version() == schema.SCHEMA_VERSION
    assert store.migrate() == []  # nothing left to apply
    rows = store.rows(f"SELECT count() AS n FROM `{store.db}`.schema_version", {})
    assert rows == [{"n": len(schema.MIGRATIONS)}]
    eng = store.rows("SELECT engine_full FROM system.tables WHERE database = {d:String} AND name = 'samples'",
                     {"d": store.db})[0]["engine_full"]
    assert "PARTITION BY (tenant, toYYYYMMDD(ts))" in eng and "ORDER BY (tenant, name, series, ts)" in eng
    assert "non_replicated_deduplication_window" in eng


def test_a_store_newer_than_the_sink_is_refused(store, store_url):
    from ingress.sink_store import open_store

    store.backend.command(f"INSERT INTO `{store.db}`.schema_version (version, description) VALUES (999, 'x')")
    with pytest.raises(ConfigError, match="newer than this sink"):
        open_store(store_url)


def test_a_batch_stored_twice_appears_once(store):
    b = make_batch(n=5)
    bid = wire.peek(b).batch_id
    assert store.put("acme", bid, b, 5, "web-1") is True
    assert store.put("acme", bid, b, 5, "web-1") is False
    assert store.seen("acme") == {bid}
    assert store.counts["acme"] == {"stored": 1, "duplicates": 1, "samples": 5}
    assert len(run(store, Query("acme", "cpu.user"))) == 5


def test_insert_dedup_token_covers_a_crash_between_samples_and_batch_row(store):
    """The samples went in, the batches row did not (a crash): the resend adds no copy."""
    from ingress.sink_store.clickhouse import samples_table

    b = make_batch(n=4)
    bid = wire.peek(b).batch_id
    store.backend.insert_arrow(store.db, "samples", samples_table(wire.decode(b)), f"acme/{bid.hex()}")
    assert store.put("acme", bid, b, 4, "web-1") is True
    assert len(run(store, Query("acme", "cpu.user"))) == 4


def test_same_batch_id_of_another_tenant_is_not_a_duplicate(store):
    a = make_batch("acme")
    bid = wire.peek(a).batch_id
    z = wire.encode("zeta", "h", [("m", {})], [0], [1], [1.0], batch_id=bid)
    assert store.put("acme", bid, a, 3, "web-1") and store.put("zeta", bid, z, 1, "h")


def test_tenants_never_see_each_others_rows(store):
    store.put("acme", wire.peek(a := make_batch("acme", n=3)).batch_id, a, 3, "web-1")
    store.put("zeta", wire.peek(z := make_batch("zeta", n=2)).batch_id, z, 2, "web-2")
    ra, rz = run(store, Query("acme", "cpu.user")), run(store, Query("zeta", "cpu.user"))
    assert {r["tenant"] for r in ra} == {"acme"} and len(ra) == 3 and {r["host"] for r in ra} == {"web-1"}
    assert {r["tenant"] for r in rz} == {"zeta"} and len(rz) == 2


def test_a_batch_over_100_days_is_refused_not_retried():
    from ingress.sink_store.clickhouse import samples_table

    day = 86_400 * 10**9
    b = wire.decode(wire.encode("acme", "h", [("m", {})], [0] * 101, [i * day for i in range(101)], [0.0] * 101))
    with pytest.raises(BadBatch, match="101 days"):
        samples_table(b)
    samples_table(wire.decode(wire.encode("acme", "h", [("m", {})], [0] * 100, [i * day for i in range(100)],
                                          [0.0] * 100)))


def test_retention_ttl_per_tenant_is_applied_and_changed(store):
    store.set_retention(30 * 86400, {"acme": 3600, "a-b": 60})
    eng = store.rows("SELECT engine_full FROM system.tables WHERE database = {d:String} AND name = 'samples'",
                     {"d": store.db})[0]["engine_full"]
    assert "multiIf(tenant = 'a-b', 60, tenant = 'acme', 3600, 2592000)" in eng
    store.set_retention(None, {})
    eng = store.rows("SELECT engine_full FROM system.tables WHERE database = {d:String} AND name = 'samples'",
                     {"d": store.db})[0]["engine_full"]
    assert "TTL" not in eng


def test_expired_rows_go_at_merge(store):
    """A sample older than its tenant's retention is gone after the TTL runs; the other tenant's stays."""
    import time

    old = time.time_ns() - 7200 * 10**9
    store.set_retention(None, {"acme": 3600})
    for t in ("acme", "zeta"):
        b = make_batch(t, n=2, t0=old)
        store.put(t, wire.peek(b).batch_id, b, 2, "web-1")
    store.backend.command(f"OPTIMIZE TABLE `{store.db}`.samples FINAL")
    assert run(store, Query("acme", "cpu.user")) == []
    assert len(run(store, Query("zeta", "cpu.user"))) == 2


# Names and values that carry SQL, quotes, escapes, braces of parameter syntax, control characters.
_nasty = st.one_of(
    st.sampled_from(["x' OR '1'='1", "'); DROP TABLE samples; --", "\\", "\\'", "{tenant:String}",
                     "a\tb\nc", "zeta", "' UNION SELECT * FROM system.tables --", "\\N", "é€😀"]),
    st.text(min_size=1, max_size=30),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metric=_nasty, key=_nasty, value=_nasty)
def test_metric_and_tag_values_carrying_sql_round_trip_and_stay_in_their_tenant(store, metric, key, value):
    """Whatever a metric name or tag holds, a query finds exactly what was stored, only of its tenant."""
    import time

    t0 = time.time_ns()
    b = wire.encode("acme", "h1", [(metric, {key: value})], [0], [t0], [1.5])
    store.put("acme", wire.peek(b).batch_id, b, 1, "h1")
    z = wire.encode("zeta", "h2", [(metric, {key: value})], [0], [t0], [2.5])
    store.put("zeta", wire.peek(z).batch_id, z, 1, "h2")
    rows = run(store, Query("acme", metric, {key: value}, t_from=t0, t_to=t0 + 1))
    assert rows == [{"tenant": "acme", "name": metric, "tags": {key: value}, "ts": t0, "value": 1.5, "host": "h1"}]
    assert run(store, Query("acme", metric, {key: value + "x"}, t_from=t0, t_to=t0 + 1)) == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_param_text_passes_any_string_exactly(store, text):
    """chDB parses parameter values as escaped text; param_text keeps every string intact."""
    rows = store.rows("SELECT hex({t:String}) AS h", {"t": text})
    assert bytes.fromhex(rows[0]["h"]).decode() == text


def test_store_url_of_a_second_directory_in_one_process_is_a_clear_error(store, tmp_path):
    from ingress.sink_store import open_store

    with pytest.raises(ConfigError, match="one directory per process"):
        open_store(str(tmp_path / "other"))


def test_clickhousestore_is_what_open_store_gives(store):
    assert isinstance(store, ClickHouseStore)
