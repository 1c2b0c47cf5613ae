"""The clickhouse:// store's SQL, checked against a recording client (no server can run here).

A live ClickHouse server test is not possible on this machine; this checks
that the server backend sends the same DDL as the embedded store, binds every
query value as a server-side parameter and inserts with the batch's
deduplication token.
"""
import pytest
from hypothesis import given, strategies as st

from ingress import wire
from ingress.errors import ConfigError
from ingress.sink_store import parse_store_url, schema
from ingress.sink_store.clickhouse import ClickHouseStore, ServerBackend
from ingress.sink_store.query import Query, build

from sink_store.conftest import make_batch


class RecordingClient:
    def __init__(self):
        self.commands, self.queries, self.inserts = [], [], []

    def command(self, sql, parameters=None):
        self.commands.append((sql, parameters))

    def query(self, sql, parameters=None):
        self.queries.append((sql, parameters))

        class R:
            def named_results(self_inner):
                return iter([])
        return R()

    def insert_arrow(self, table, tbl, database=None, settings=None):
        self.inserts.append((database, table, tbl, settings))

    def close(self):
        pass


def server_store(retention=None, per=None):
    c = RecordingClient()
    spec = parse_store_url("clickhouse://writer@ch.example:8123/metrics")
    return ClickHouseStore(ServerBackend(spec, client=c), spec["database"], retention_s=retention,
                           tenant_retention=per or {}), c


def test_server_gets_the_same_ddl_in_order():
    st_, c = server_store(86400, {"acme": 3600})
    sqls = [s for s, _ in c.commands]
    assert sqls[0] == "CREATE DATABASE IF NOT EXISTS `metrics`"
    assert sqls[1] == schema.render(schema.VERSION_TABLE, "metrics")
    assert sqls[2:4] == [schema.render(s, "metrics") for s in schema.MIGRATIONS[0][2]]
    assert sqls[4].startswith("INSERT INTO `metrics`.schema_version")
    assert sqls[5] == ("ALTER TABLE `metrics`.samples MODIFY TTL toDateTime(ts) + "
                       "toIntervalSecond(multiIf(tenant = 'acme', 3600, 86400))")


def test_server_put_inserts_with_the_dedup_token_and_parameters():
    st_, c = server_store()
    b = make_batch(n=3)
    bid = wire.peek(b).batch_id
    assert st_.put("acme", bid, b, 3, "web-1")
    sql, params = c.queries[-1]
    assert params == {"t": "acme", "b": bid.hex()} and "acme" not in sql and bid.hex() not in sql
    (db1, t1, tbl1, s1), (db2, t2, tbl2, s2) = c.inserts
    assert (db1, t1, db2, t2) == ("metrics", "samples", "metrics", "batches")
    assert s1 == s2 == {"insert_deduplication_token": f"acme/{bid.hex()}"}
    assert tbl1.num_rows == 3 and tbl1.column_names == ["tenant", "name", "host", "tags", "ts", "value"]
    assert tbl2.column("batch_id").to_pylist() == [bid]


@given(metric=st.text(min_size=1, max_size=20), k=st.text(max_size=10), v=st.text(max_size=10),
       agg=st.sampled_from([None, "avg", "sum", "max", "rate"]))
def test_query_sql_text_never_holds_a_user_value(metric, k, v, agg):
    """The SQL depends only on the query's shape; every value is a parameter."""
    sql, params = build(Query("acme", metric, {k: v}, 1, 2, agg, 60))
    ref, _ = build(Query("zeta", "m", {"a": "b"}, 3, 4, agg, 120))
    assert sql == ref
    assert params["tenant"] == "acme" and params["metric"] == metric and (params["k0"], params["v0"]) == (k, v)
    assert sql.index("tenant = {tenant:String}") < sql.index("name = {metric:String}")


@pytest.mark.parametrize("bad", ["Acme", "", "a b", "x'--", "a" * 64])
def test_query_refuses_a_bad_tenant(bad):
    with pytest.raises(ConfigError, match="not a valid tenant id"):
        build(Query(bad, "m"))


def test_reader_roles_and_row_policies_ddl():
    ddl = schema.server_security_ddl("metrics", ["acme", "a-b"])
    assert "CREATE ROLE IF NOT EXISTS `ingress_reader_acme`" in ddl
    assert ("CREATE ROW POLICY IF NOT EXISTS `ingress_samples_acme` ON `metrics`.samples FOR SELECT "
            "USING tenant = 'acme' TO `ingress_reader_acme`") in ddl
    assert "GRANT SELECT ON `metrics`.batches TO `ingress_reader_a-b`" in ddl
    with pytest.raises(ConfigError):
        schema.server_security_ddl("metrics", ["x'; DROP"])


@pytest.mark.parametrize("url,want", [
    ("./sink-data", {"kind": "chdb", "path": "./sink-data", "database": "ingress"}),
    ("chdb:///var/lib/s?db=m2", {"kind": "chdb", "path": "/var/lib/s", "database": "m2"}),
    ("file://d", {"kind": "file", "path": "d"}),
    ("clickhouses://h:9440/x", {"kind": "server", "host": "h", "port": 9440, "database": "x", "user": "default",
                                "secure": True}),
])
def test_store_urls(url, want):
    assert parse_store_url(url) == want


@pytest.mark.parametrize("bad", ["", "chdb://", "http://x", "clickhouse://h:99999/db", "clickhouse:///db",
                                 "clickhouse://u:pw@h:1/db", "clickhouse://h:1/a-b", "p?db=x;y", "p?x=1"])
def test_bad_store_urls_name_the_problem(bad):
    with pytest.raises(ConfigError, match="--store"):
        parse_store_url(bad)


@given(st.text(max_size=60))
def test_any_store_url_parses_or_is_a_config_error(text):
    try:
        parse_store_url(text)
    except ConfigError as e:
        assert "\n" not in str(e)


def test_the_agent_imports_none_of_the_sink_extra():
    import subprocess
    import sys

    code = ("import sys, ingress.cli, ingress.agent; "
            "print(sorted(m for m in ('chdb', 'pyarrow', 'clickhouse_connect', 'pandas', 'ingress.sink_store') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
