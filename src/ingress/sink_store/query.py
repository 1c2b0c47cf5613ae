"""Tenant-bound reads: the only way ``ingress sink query`` (and anything else) reads samples.

:func:`build` returns SQL *text that holds no user value* plus its parameters:
the tenant, metric, tag keys and values, times and step are all bound as
``{name:Type}`` parameters (chDB's ``params=``, the server's ``param_NAME``),
never formatted into the SQL. The tenant condition is always the first of the
WHERE clause and cannot be left out: ``tenant`` is a required argument that
must be a valid tenant id.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ingress import names
from ingress.errors import ConfigError
from ingress.sink_store.schema import quote_ident

AGGS = ("avg", "sum", "max", "rate")

_AGG_SQL = {
    "avg": "avg(value)",
    "sum": "sum(value)",
    "max": "max(value)",
    # Per second over the bucket, from its first and last sample (a counter's
    # increase; a reset inside a bucket shows as a negative rate).
    "rate": ("if(count() > 1, (argMax(value, ts) - argMin(value, ts)) * 1e9 / "
             "(toUnixTimestamp64Nano(max(ts)) - toUnixTimestamp64Nano(min(ts))), nan)"),
}


@dataclass
class Query:
    tenant: str
    metric: str
    tags: dict[str, str] = field(default_factory=dict)
    t_from: int | None = None  # ns since the epoch, inclusive
    t_to: int | None = None    # ns since the epoch, exclusive
    agg: str | None = None
    step_s: int = 60
    limit: int = 1_000_000


def build(q: Query, database: str = "ingress") -> tuple[str, dict[str, str]]:
    """(sql, params) for ``q``; ConfigError for a bad tenant, aggregation or step."""
    if not names.is_tenant_id(q.tenant):
        raise ConfigError(f"--tenant: {q.tenant!r} is not a valid tenant id ({names.text(names.TENANT_ID_RE)})")
    if not isinstance(q.metric, str) or not q.metric:
        raise ConfigError("--metric: an empty metric name")
    params: dict[str, str] = {"tenant": q.tenant, "metric": q.metric}
    where = ["tenant = {tenant:String}", "name = {metric:String}"]
    for i, (k, v) in enumerate(sorted(q.tags.items())):
        params[f"k{i}"], params[f"v{i}"] = k, v
        where.append(f"mapContains(tags, {{k{i}:String}}) AND tags[{{k{i}:String}}] = {{v{i}:String}}")
    if q.t_from is not None:
        params["from"] = str(int(q.t_from))
        where.append("ts >= fromUnixTimestamp64Nano({from:Int64}, 'UTC')")
    if q.t_to is not None:
        params["to"] = str(int(q.t_to))
        where.append("ts < fromUnixTimestamp64Nano({to:Int64}, 'UTC')")
    params["limit"] = str(int(q.limit))
    table = f"{quote_ident(database)}.samples"
    cond = " AND ".join(f"({w})" for w in where)
    if q.agg is None:
        # Output aliases differ from column names: ClickHouse aliases are
        # visible in WHERE, so "AS ts" would change what the filter compares.
        sql = (f"SELECT tenant AS o_tenant, name AS o_name, tags AS o_tags, toUnixTimestamp64Nano(ts) AS o_ts, "
               f"toFloat64(value) AS o_value, host AS o_host "
               f"FROM {table} WHERE {cond} ORDER BY ts, host, series LIMIT {{limit:UInt64}}")
        return sql, params
    if q.agg not in AGGS:
        raise ConfigError(f"--agg: {q.agg!r} is not one of {', '.join(AGGS)}")
    if not (isinstance(q.step_s, int) and 0 < q.step_s <= 366 * 86400):
        raise ConfigError(f"--step: {q.step_s!r} must be from 1s to 366d")
    params["step"] = str(q.step_s)
    sql = (f"SELECT tenant AS o_tenant, name AS o_name, any(tags) AS o_tags, "
           f"toUnixTimestamp64Nano(toDateTime64(toStartOfInterval(ts, toIntervalSecond({{step:UInt32}})), 9, 'UTC')) "
           f"AS o_ts, toFloat64({_AGG_SQL[q.agg]}) AS o_value, host AS o_host "
           f"FROM {table} WHERE {cond} GROUP BY tenant, name, host, series, o_ts "
           f"ORDER BY o_ts, o_host, series LIMIT {{limit:UInt64}}")
    return sql, params


def run(store: object, q: Query) -> list[dict]:
    """Rows of ``q`` from a ClickHouseStore: dicts of the ``--once`` fields plus ``host``."""
    sql, params = build(q, store.db)  # type: ignore[attr-defined]
    out = []
    for r in store.rows(sql, params):  # type: ignore[attr-defined]
        v = r["o_value"]
        if isinstance(v, str):  # JSON has no nan/inf: chDB writes them as strings or null
            v = float(v) if v.lstrip("-").lower() in ("nan", "inf", "infinity") else None
        out.append({"tenant": r["o_tenant"], "name": r["o_name"], "tags": dict(r["o_tags"]), "ts": int(r["o_ts"]),
                    "value": None if v is None else float(v), "host": r["o_host"]})
    return out
