"""The sink's store: ClickHouse, embedded (chDB) or a server (clickhouse-connect).

``open_store(url)`` takes the sink's ``--store``:

=====================================  =========================================
``./sink-data`` (a plain path)         chDB, a persistent database in that directory
``chdb:///abs/path``, ``chdb://rel``   the same, spelled as a URL
``...?db=NAME`` (either of the above)  the database inside it (default ``ingress``)
``clickhouse://[USER@]HOST:PORT/DB``   a ClickHouse server over HTTP (clickhouse-connect);
                                       the password from ``INGRESS_SINK_CH_PASSWORD``
``clickhouses://...``                  the same over HTTPS
``file://DIR``                         the original batch files per tenant (no queries)
=====================================  =========================================

chdb, clickhouse-connect and pyarrow come with the optional extra
``ingress-agent[sink]``; nothing here is imported by the agent.
"""
from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

from ingress.errors import ConfigError

DEFAULT_STORE = "./sink-data"


def parse_store_url(url: str) -> dict[str, Any]:
    """``--store`` -> ``{"kind": "chdb"|"server"|"file", ...}``; ConfigError naming what is wrong."""
    from ingress.sink_store.schema import DB_RE

    if not isinstance(url, str) or not url.strip():
        raise ConfigError("--store: an empty value (give a path, chdb://PATH or clickhouse://HOST:PORT/DB)")
    shown = repr(url[:200])
    if "://" not in url:
        path, _, q = url.partition("?")
        return _with_db({"kind": "chdb", "path": path}, q, shown)
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme == "chdb":
        path, _, q = rest.partition("?")
        if not path:
            raise ConfigError(f"--store {shown}: chdb:// needs a directory (chdb:///abs/path or chdb://rel/path)")
        return _with_db({"kind": "chdb", "path": path}, q, shown)
    if scheme == "file":
        if not rest:
            raise ConfigError(f"--store {shown}: file:// needs a directory")
        return {"kind": "file", "path": rest}
    if scheme in ("clickhouse", "clickhouses"):
        u = urllib.parse.urlsplit(url)
        try:
            port = u.port
        except ValueError:
            raise ConfigError(f"--store {shown}: the port must be a number from 1 to 65535") from None
        if not u.hostname:
            raise ConfigError(f"--store {shown}: no host (clickhouse://HOST:PORT/DB)")
        db = u.path.strip("/") or "ingress"
        if not DB_RE.fullmatch(db):
            raise ConfigError(f"--store {shown}: database {db!r} is not a plain name ([A-Za-z_][A-Za-z0-9_]*)")
        if u.password:
            raise ConfigError(f"--store: put the password in INGRESS_SINK_CH_PASSWORD, not in the URL")
        return {"kind": "server", "host": u.hostname, "port": port or (8443 if scheme == "clickhouses" else 8123),
                "database": db, "user": urllib.parse.unquote(u.username or "default"),
                "secure": scheme == "clickhouses"}
    raise ConfigError(f"--store {shown}: unknown scheme {scheme!r} (a path, chdb://, clickhouse://, "
                      f"clickhouses:// or file://)")


def _with_db(spec: dict, query: str, shown: str) -> dict:
    from ingress.sink_store.schema import DB_RE

    db = "ingress"
    for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if k != "db":
            raise ConfigError(f"--store {shown}: unknown option {k!r} (only db=NAME)")
        db = v
    if not DB_RE.fullmatch(db):
        raise ConfigError(f"--store {shown}: database {db!r} is not a plain name ([A-Za-z_][A-Za-z0-9_]*)")
    spec["database"] = db
    return spec


def open_store(url: str | os.PathLike, *, retention_s: int | None = None,
               tenant_retention: dict[str, int] | None = None) -> Any:
    """Open (and migrate) the store ``url`` names; ConfigError when it cannot be used."""
    spec = parse_store_url(os.fspath(url))
    if spec["kind"] == "file":
        from ingress.sink_store.files import SinkStore

        return SinkStore(spec["path"])
    from ingress.sink_store.clickhouse import ClickHouseStore, chdb_backend, server_backend

    backend = chdb_backend(spec["path"]) if spec["kind"] == "chdb" else server_backend(spec)
    try:
        return ClickHouseStore(backend, spec["database"], retention_s=retention_s,
                               tenant_retention=tenant_retention or {})
    except BaseException:
        backend.close()
        raise


__all__ = ["DEFAULT_STORE", "open_store", "parse_store_url", "Path"]
