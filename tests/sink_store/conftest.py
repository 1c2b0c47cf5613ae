"""Fixtures of the aggregator's store tests.

chDB opens one database directory per process, and starting it costs ~0.5 s,
so every in-process test shares one directory (``chdb_dir``) and gets a
database of its own in it (``store_url``). Sinks started as subprocesses
have their own directories.
"""
import itertools
import os
import subprocess
import sys
import time

import numpy as np
import pytest

_n = itertools.count()


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def store_url(chdb_dir):
    return f"chdb://{chdb_dir}?db=t{os.getpid()}_{next(_n)}"


@pytest.fixture
def store(store_url):
    from ingress.sink_store import open_store

    s = open_store(store_url)
    yield s
    s.close()


def make_batch(tenant="acme", host="web-1", series=(("cpu.user", {"cpu": "0"}),), n=3, t0=None):
    from ingress import wire

    t0 = time.time_ns() if t0 is None else t0
    k = len(series)
    return wire.encode(tenant, host, list(series), np.arange(n, dtype=np.uint32) % k,
                       np.array([t0 + i * 10**9 for i in range(n)], dtype=np.int64),
                       np.arange(n, dtype=np.float64))


def run_cli(*args, timeout=60, **kw):
    return subprocess.run([sys.executable, "-m", "ingress", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)
