"""The aggregator's ClickHouse schema: every DDL statement the sink runs, in one place.

``ingress sink`` applies :data:`MIGRATIONS` at start, in order, each exactly
once, and records each in ``schema_version``; the same statements serve the
embedded store (chDB) and a ClickHouse server (``clickhouse://``). A change of
schema is a new entry at the end of :data:`MIGRATIONS`, never an edit of an
applied one (docs/aggregator.md, "Migrations").

Every statement is generated from :func:`quote_ident` / :func:`quote_literal`
for the only values that are not constants (the database name, tenant ids in
the retention TTL, role names): those are validated first (a database name is
``[A-Za-z_][A-Za-z0-9_]{0,62}``, a tenant id the contract's pattern) and then
quoted, so no string reaches SQL unquoted. User-supplied values of *queries*
(metric names, tags) never reach SQL text at all: they are query parameters
(see :mod:`ingress.sink_store.query`).
"""
from __future__ import annotations

import re

from ingress import names
from ingress.errors import ConfigError

DB_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

#: ClickHouse's insert deduplication remembers the tokens of this many recent
#: insert blocks per table (``non_replicated_deduplication_window``; a
#: replicated table uses ``replicated_deduplication_window``). The batches
#: table is the lasting record of a stored batch id; the window only has to
#: cover a sink crash between a batch's sample insert and its batches row.
DEDUP_WINDOW = 10000


_ROLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,100}")


def quote_ident(name: str, *, dash: bool = False) -> str:
    """A database, table or role name as a back-quoted identifier; ConfigError if not a plain name.

    ``dash``: also allow ``-`` (role and policy names carry a tenant id as is).
    """
    if not isinstance(name, str) or not (_ROLE_RE if dash else DB_RE).fullmatch(name):
        raise ConfigError(f"{name!r} is not a valid ClickHouse name ([A-Za-z_][A-Za-z0-9_]{{0,62}})")
    return f"`{name}`"


_ESC = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f",
        "\0": "\\0"}


def quote_literal(text: str) -> str:
    """A string literal for ClickHouse SQL: every quote and backslash escaped.

    Used for values the sink itself controls (tenant ids from its own
    configuration, already checked against the tenant id pattern); never
    for a value a query's user typed.
    """
    return "'" + "".join(_ESC.get(c, c) for c in text) + "'"


def param_text(text: str) -> str:
    """A query parameter's value in ClickHouse's escaped text form.

    chDB (and the server's ``param_NAME``) parse a parameter value as an
    *escaped* string: ``\\n`` in the value would arrive as a newline, a bare
    tab is refused. This escapes backslash and the control characters so
    the query sees exactly ``text``; tests/sink_store/test_query.py checks
    the round trip for every string hypothesis makes.
    """
    return "".join(_ESC.get(c, c) for c in text)


def _tenant(t: str) -> str:
    if not names.is_tenant_id(t):
        raise ConfigError(f"{t!r} is not a valid tenant id ({names.text(names.TENANT_ID_RE)})")
    return t


def ttl_expr(retention_s: int | None, per_tenant: dict[str, int]) -> str | None:
    """The samples table's TTL expression for a default and per-tenant retention (seconds).

    None when nothing expires. A tenant without its own retention gets the default.
    """
    if retention_s is None and not per_tenant:
        return None
    default = "NULL" if retention_s is None else str(int(retention_s))
    if per_tenant:
        arms = ", ".join(f"tenant = {quote_literal(_tenant(t))}, {int(s)}" for t, s in sorted(per_tenant.items()))
        secs = f"multiIf({arms}, {default})"
    else:
        secs = default
    if retention_s is None:
        # Tenants without their own retention never expire: only theirs are deleted.
        listed = ", ".join(quote_literal(t) for t in sorted(per_tenant))
        return f"toDateTime(ts) + toIntervalSecond({secs.replace('NULL)', '0)')}) WHERE tenant IN ({listed})"
    return f"toDateTime(ts) + toIntervalSecond({secs})"


# Each migration: (version, description, [statements]); "{db}" is the quoted
# database. Applied in order, each once; never edit an applied one.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "samples and batches tables", [
        # One row per sample. ORDER BY serves "one tenant, one metric, a time
        # range": a tenant's metric is one contiguous range of the key, its
        # series (host + tags, hashed) next, time last. Codecs: see
        # docs/aggregator.md "Codecs" for the measurement that chose them.
        """CREATE TABLE IF NOT EXISTS {db}.samples (
    tenant LowCardinality(String),
    name LowCardinality(String),
    host LowCardinality(String),
    tags Map(LowCardinality(String), String),
    ts DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)),
    value Float64 CODEC(ZSTD(1)),
    series UInt64 MATERIALIZED sipHash64(host, mapSort(tags))
) ENGINE = MergeTree
PARTITION BY (tenant, toYYYYMMDD(ts))
ORDER BY (tenant, name, series, ts)
SETTINGS non_replicated_deduplication_window = {window}, fsync_after_insert = 1,
    fsync_part_directory = 1, ttl_only_drop_parts = 1""",
        # One row per stored batch: the lasting record that makes a resent
        # batch a duplicate (the insert deduplication window covers the
        # moment between a batch's samples and this row).
        """CREATE TABLE IF NOT EXISTS {db}.batches (
    tenant LowCardinality(String),
    batch_id FixedString(16),
    host LowCardinality(String),
    samples UInt64,
    source LowCardinality(String),
    stored_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY tenant
ORDER BY (tenant, batch_id)
SETTINGS non_replicated_deduplication_window = {window}, fsync_after_insert = 1,
    fsync_part_directory = 1""",
    ]),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]

VERSION_TABLE = """CREATE TABLE IF NOT EXISTS {db}.schema_version (
    version UInt32,
    description String,
    applied_at DateTime DEFAULT now()
) ENGINE = MergeTree ORDER BY version"""


def render(stmt: str, db: str) -> str:
    return stmt.replace("{db}", quote_ident(db)).replace("{window}", str(DEDUP_WINDOW))


def ttl_statement(db: str, expr: str | None) -> str:
    """ALTER that sets (or removes) the samples TTL; applied at every start (cheap when unchanged)."""
    if expr is None:
        return f"ALTER TABLE {quote_ident(db)}.samples REMOVE TTL"
    return f"ALTER TABLE {quote_ident(db)}.samples MODIFY TTL {expr}"


def server_security_ddl(db: str, tenants: list[str]) -> list[str]:
    """For a ClickHouse server: one reader role per tenant and row policies that bind it.

    Each ``ingress_reader_<tenant>`` role may SELECT the samples and batches
    tables and sees only rows whose ``tenant`` is its own (a row policy per
    table and role). Users are granted a role by the operator (``GRANT
    ingress_reader_acme TO alice``). The embedded store has no users: there
    the tenant-bound query (ingress.sink_store.query) is the only guard.
    """
    q = quote_ident(db)
    out = []
    for t in sorted(tenants):
        role = quote_ident("ingress_reader_" + _tenant(t), dash=True)
        out.append(f"CREATE ROLE IF NOT EXISTS {role}")
        for table in ("samples", "batches"):
            pol = quote_ident(f"ingress_{table}_{t}", dash=True)
            out.append(f"CREATE ROW POLICY IF NOT EXISTS {pol} ON {q}.{table} "
                       f"FOR SELECT USING tenant = {quote_literal(t)} TO {role}")
            out.append(f"GRANT SELECT ON {q}.{table} TO {role}")
    return out
