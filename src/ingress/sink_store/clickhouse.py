"""ClickHouseStore: batches into the samples table, exactly once per batch id.

A batch is stored in three steps, under the store's lock:

1. ``batches`` already holds (tenant, batch id)? Then it is a duplicate: nothing is written.
2. Its samples go in as ONE insert with ``insert_deduplication_token =
   '<tenant>/<batch id hex>'``: ClickHouse drops a second insert with the
   same token (within ``non_replicated_deduplication_window`` blocks).
3. Its row goes into ``batches`` (same token).

Only then does the caller acknowledge (HTTP 2xx, Kafka offset commit). A
crash after 2 and before 3 leaves samples without a batches row; the resent
batch passes step 1, its samples insert is dropped by the token, step 3
records it: one copy (tests/sink_store/test_crash.py kills a sink exactly
there). The tables are created with ``fsync_after_insert`` and
``fsync_part_directory``, so a returned insert is on disk.

Backends: :class:`ChdbBackend` (embedded; one database directory per process,
a chDB limit) and :class:`ServerBackend` (clickhouse-connect over HTTP).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from ingress.errors import ConfigError, IngressError
from ingress.sink_store import schema
from ingress.sink_store.schema import param_text, quote_ident, quote_literal

log = logging.getLogger("ingress.sink")

#: A batch whose samples span more days than this is refused (each day of a
#: tenant is a partition; ClickHouse refuses more than 100 per insert).
MAX_DAYS_PER_BATCH = 100
_DAY_NS = 86_400 * 10**9


class StoreError(IngressError):
    """The store could not do it now (retry later)."""


class BadBatch(ValueError):
    """The batch can never be stored (it would be refused on every retry)."""


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"the sink's store needs {module!r}: pip install 'ingress-agent[sink]'") from None


# --------------------------------------------------------------------------- backends

class ChdbBackend:
    """chDB in this process. chDB holds one database directory per process: a second
    path while one is open is a ConfigError; the same path is shared (reference counted)."""

    _lock = threading.Lock()
    _open: dict[str, Any] = {}  # path -> [session, refs]

    def __init__(self, path: str) -> None:
        session = _need("chdb.session")
        _need("pyarrow")
        p = str(Path(path).resolve())
        with ChdbBackend._lock:
            cur = ChdbBackend._open.get(p)
            if cur is None:
                if ChdbBackend._open:
                    other = next(iter(ChdbBackend._open))
                    raise ConfigError(f"--store {path}: this process already holds the embedded store at "
                                      f"{other} (chDB opens one directory per process)")
                try:
                    Path(p).mkdir(parents=True, exist_ok=True, mode=0o700)
                    cur = ChdbBackend._open[p] = [session.Session(p), 0]
                except OSError as e:
                    raise ConfigError(f"--store {path}: {e.strerror or e}") from None
                except Exception as e:  # chDB raises its own errors (a locked or damaged directory)
                    raise ConfigError(f"--store {path}: cannot open the embedded store: "
                                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            cur[1] += 1
        self.path = p
        self.session = cur[0]
        self.closed = False
        self.q = threading.Lock()

    def command(self, sql: str, params: dict[str, str] | None = None) -> None:
        self.select(sql, params)

    def select(self, sql: str, params: dict[str, str] | None = None) -> list[dict]:
        p = {k: param_text(str(v)) for k, v in (params or {}).items()} or None
        try:
            with self.q:
                r = self.session.query(sql, "JSONEachRow", params=p)
        except Exception as e:
            raise StoreError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        data = r.bytes() if hasattr(r, "bytes") else bytes(r)
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    def insert_arrow(self, db: str, table: str, tbl: Any, token: str) -> None:
        # chDB reads the arrow table by its Python name: "tbl" is a local here.
        cols = ", ".join(quote_ident(c) for c in tbl.column_names)
        sql = (f"INSERT INTO {quote_ident(db)}.{quote_ident(table)} ({cols}) "
               f"SETTINGS insert_deduplication_token = {quote_literal(token)} "
               f"SELECT {cols} FROM Python(tbl)")
        try:
            with self.q:
                self.session.query(sql)
        except Exception as e:
            raise StoreError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with ChdbBackend._lock:
            cur = ChdbBackend._open.get(self.path)
            if cur is not None:
                cur[1] -= 1
                if cur[1] <= 0:
                    del ChdbBackend._open[self.path]
                    cur[0].close()


class ServerBackend:
    """A ClickHouse server through clickhouse-connect (HTTP). Parameters are bound by
    the server (``{name:Type}`` placeholders), never formatted into the SQL text."""

    def __init__(self, spec: dict, client: Any = None) -> None:
        import os

        if client is None:
            cc = _need("clickhouse_connect")
            try:
                client = cc.get_client(host=spec["host"], port=spec["port"], username=spec["user"],
                                       password=os.environ.get("INGRESS_SINK_CH_PASSWORD", ""),
                                       secure=spec["secure"])
            except Exception as e:
                raise ConfigError(f"--store clickhouse://{spec['host']}:{spec['port']}: cannot connect: "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.client = client
        self.q = threading.Lock()

    def command(self, sql: str, params: dict[str, str] | None = None) -> None:
        try:
            with self.q:
                self.client.command(sql, parameters=params or None)
        except Exception as e:
            raise StoreError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    def select(self, sql: str, params: dict[str, str] | None = None) -> list[dict]:
        try:
            with self.q:
                return list(self.client.query(sql, parameters=params or None).named_results())
        except Exception as e:
            raise StoreError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    def insert_arrow(self, db: str, table: str, tbl: Any, token: str) -> None:
        try:
            with self.q:
                self.client.insert_arrow(table, tbl, database=db,
                                         settings={"insert_deduplication_token": token})
        except Exception as e:
            raise StoreError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass


def chdb_backend(path: str) -> ChdbBackend:
    return ChdbBackend(path)


def server_backend(spec: dict) -> ServerBackend:
    return ServerBackend(spec)


# --------------------------------------------------------------------------- the store

class ClickHouseStore:
    """Stores batches into the schema of :mod:`ingress.sink_store.schema`.

    ``put`` has the interface of the file store (``ingress.sink_store.files.SinkStore``):
    True when stored, False for a duplicate batch id; raises
    :class:`StoreError` when it cannot store now (nothing acknowledged) and
    :class:`BadBatch` for a batch no retry can store.
    """

    def __init__(self, backend: Any, database: str = "ingress", *, retention_s: int | None = None,
                 tenant_retention: dict[str, int] | None = None) -> None:
        self.backend = backend
        self.db = database
        self.q = quote_ident(database)
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}
        self.migrate()
        self.set_retention(retention_s, tenant_retention or {})

    # -- schema ------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply the migrations not yet recorded in schema_version; returns the versions applied."""
        b = self.backend
        b.command(f"CREATE DATABASE IF NOT EXISTS {self.q}")
        b.command(schema.render(schema.VERSION_TABLE, self.db))
        have = {int(r["version"]) for r in b.select(f"SELECT version FROM {self.q}.schema_version")}
        newer = [v for v in have if v > schema.SCHEMA_VERSION]
        if newer:
            raise ConfigError(f"the store's schema is version {max(newer)}, newer than this sink's "
                              f"{schema.SCHEMA_VERSION}: upgrade ingress")
        done = []
        for version, what, stmts in schema.MIGRATIONS:
            if version in have:
                continue
            for s in stmts:
                b.command(schema.render(s, self.db))
            b.command(f"INSERT INTO {self.q}.schema_version (version, description) "
                      f"VALUES ({int(version)}, {quote_literal(what)})")
            log.info("sink: store %s: schema migration %d applied (%s)", self.db, version, what)
            done.append(version)
        return done

    def schema_version(self) -> int:
        rows = self.backend.select(f"SELECT max(version) AS v FROM {self.q}.schema_version")
        return int(rows[0]["v"]) if rows else 0

    def set_retention(self, retention_s: int | None, tenant_retention: dict[str, int]) -> None:
        self.retention = (retention_s, dict(tenant_retention))
        expr = schema.ttl_expr(retention_s, tenant_retention)
        try:
            self.backend.command(schema.ttl_statement(self.db, expr),)
        except StoreError as e:
            if expr is not None or "TTL" not in str(e):  # removing a TTL that is not there is fine
                raise

    # -- writes ------------------------------------------------------------------
    def _count(self, tenant: str) -> dict[str, int]:
        c = self.counts.get(tenant)
        if c is None:
            c = self.counts[tenant] = {"stored": 0, "duplicates": 0, "samples": 0}
        return c

    def has_batch(self, tenant: str, batch_id: bytes) -> bool:
        rows = self.backend.select(
            f"SELECT 1 AS x FROM {self.q}.batches WHERE tenant = {{t:String}} AND batch_id = unhex({{b:String}}) "
            f"LIMIT 1", {"t": tenant, "b": batch_id.hex()})
        return bool(rows)

    def put(self, tenant: str, batch_id: bytes, payload: bytes, sample_count: int, host: str, *,
            batch: Any = None, source: str = "http") -> bool:
        """Store one batch (decoded from ``payload`` unless ``batch`` is given) exactly once."""
        if batch is None:
            from ingress import wire

            batch = wire.decode(payload)
        if batch.tenant != tenant:
            raise BadBatch(f"the batch belongs to tenant {batch.tenant!r}, not {tenant!r}")
        tbl = samples_table(batch)
        token = f"{tenant}/{batch_id.hex()}"
        with self.lock:
            c = self._count(tenant)
            if self.has_batch(tenant, batch_id):
                c["duplicates"] += 1
                return False
            if tbl.num_rows:
                self.backend.insert_arrow(self.db, "samples", tbl, token)
            self._after_samples(tenant, batch_id)
            self.backend.insert_arrow(self.db, "batches",
                                      batches_row(tenant, batch_id, batch.host, tbl.num_rows, source), token)
            c["stored"] += 1
            c["samples"] += tbl.num_rows
            return True

    def _after_samples(self, tenant: str, batch_id: bytes) -> None:
        """Between a batch's samples insert and its batches row: nothing to do. The crash
        test replaces it (in a sink subprocess) with a SIGKILL of the process."""

    def put_rows(self, tenant: str, token: str, rows: list[dict], source: str = "kafka-json") -> bool:
        """Store samples given as dicts of the contract's line format (the json schema), once per token."""
        tbl = rows_table(tenant, rows)
        with self.lock:
            c = self._count(tenant)
            self.backend.insert_arrow(self.db, "samples", tbl, f"{tenant}/{token}")
            c["samples"] += tbl.num_rows
            return True

    # -- reads -------------------------------------------------------------------
    def seen(self, tenant: str) -> set[bytes]:
        rows = self.backend.select(f"SELECT hex(batch_id) AS b FROM {self.q}.batches FINAL "
                                   f"WHERE tenant = {{t:String}}", {"t": tenant})
        return {bytes.fromhex(r["b"]) for r in rows}

    def rows(self, sql: str, params: dict[str, str]) -> list[dict]:
        return self.backend.select(sql, params)

    def close(self) -> None:
        self.backend.close()


def samples_table(batch: Any) -> Any:
    """A decoded batch as an arrow table (tenant, name, host, tags, ts, value); refuses a
    batch over :data:`MAX_DAYS_PER_BATCH` days with :class:`BadBatch`."""
    import numpy as np

    pa = _need("pyarrow")
    n = len(batch.series_index)
    ts = np.asarray(batch.timestamps, dtype=np.int64)
    if n:
        days = np.unique(ts // _DAY_NS)
        if len(days) > MAX_DAYS_PER_BATCH:
            raise BadBatch(f"the batch's samples span {len(days)} days; the store takes at most "
                           f"{MAX_DAYS_PER_BATCH} per batch (one partition per tenant and day)")
    idx = pa.array(np.asarray(batch.series_index, dtype=np.int64))
    names = pa.array([s[0] for s in batch.series], type=pa.string()).take(idx) if n else pa.array([], pa.string())
    tags = (pa.array([sorted(s[1].items()) for s in batch.series], type=pa.map_(pa.string(), pa.string())).take(idx)
            if n else pa.array([], pa.map_(pa.string(), pa.string())))
    return pa.table({
        "tenant": pa.array([batch.tenant] * n, type=pa.string()),
        "name": names,
        "host": pa.array([batch.host] * n, type=pa.string()),
        "tags": tags,
        "ts": pa.array(ts, type=pa.timestamp("ns", tz="UTC")),
        "value": pa.array(np.asarray(batch.values, dtype=np.float64), type=pa.float64()),
    })


def rows_table(tenant: str, rows: list[dict]) -> Any:
    pa = _need("pyarrow")
    return pa.table({
        "tenant": pa.array([tenant] * len(rows), type=pa.string()),
        "name": pa.array([r["name"] for r in rows], type=pa.string()),
        "host": pa.array([r.get("host") or "" for r in rows], type=pa.string()),
        "tags": pa.array([sorted(r["tags"].items()) for r in rows], type=pa.map_(pa.string(), pa.string())),
        "ts": pa.array([r["ts"] for r in rows], type=pa.timestamp("ns", tz="UTC")),
        "value": pa.array([float("nan") if r["value"] is None else r["value"] for r in rows], type=pa.float64()),
    })


def batches_row(tenant: str, batch_id: bytes, host: str, samples: int, source: str) -> Any:
    pa = _need("pyarrow")
    return pa.table({"tenant": [tenant], "batch_id": pa.array([batch_id], pa.binary(16)), "host": [host],
                     "samples": pa.array([samples], pa.uint64()), "source": [source]})


__all__ = ["ClickHouseStore", "ChdbBackend", "ServerBackend", "StoreError", "BadBatch", "time"]
