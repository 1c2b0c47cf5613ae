"""Fixtures shared by the spool tests."""
from __future__ import annotations

import os
import random

import pytest
from spool_helpers import FakeClock

from ingress.spool import Spool, TenantPolicy


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def open_spool(data_dir, clock):
    """``open_spool(**overrides)`` -> Spool; every spool it opened is closed at teardown."""
    opened = []

    def make(tenants=None, outputs=("out",), **kw):
        kw.setdefault("write_mb_s", None)
        kw.setdefault("clock", clock)
        kw.setdefault("maintain_every_s", None)  # retention runs when a test says so
        sp = Spool(data_dir, tenants or {"acme": TenantPolicy()}, outputs, **kw)
        opened.append(sp)
        return sp

    yield make
    for sp in opened:
        sp.close()


@pytest.fixture
def seeded_rng():
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"random seed: {seed}")
    return random.Random(seed)
