"""Helpers for the collector tests: golden /proc and /sys trees, sample lookup."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
T0 = 1_700_000_000_000_000_000  # an injected clock: ns since the epoch
SEC = 1_000_000_000


class Tree:
    """A writable copy of a golden /proc (and /sys) tree; ``overlay`` moves it on a pass."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.proc = tmp / "proc"
        self.sys = tmp / "sys"
        shutil.copytree(FIXTURES / "proc" / name, self.proc, symlinks=True)
        sys_src = FIXTURES / "sys" / name
        if sys_src.exists():
            shutil.copytree(sys_src, self.sys, symlinks=True)
        else:
            self.sys.mkdir()

    def overlay(self, name: str) -> None:
        """Copy the files of fixture ``name`` over this tree (the host, one pass later)."""
        shutil.copytree(FIXTURES / "proc" / name, self.proc, symlinks=True, dirs_exist_ok=True)

    def replace(self, name: str) -> None:
        """Swap the whole /proc tree for fixture ``name`` (processes came and went)."""
        shutil.rmtree(self.proc)
        shutil.copytree(FIXTURES / "proc" / name, self.proc, symlinks=True)

    def settings(self, **options):
        from ingress.collect.base import CollectorSettings

        return CollectorSettings(proc_root=str(self.proc), sys_root=str(self.sys), options=options)




def samples(collector, cols) -> dict:
    """``{(name, ((tag, value), ...)): value}`` for one pass; duplicate series fail."""
    out = {}
    assert cols.local_ids.dtype.name == "uint32" and cols.values.dtype.name == "float64"
    assert len(cols.local_ids) == len(cols.values)
    for sid, v in zip(cols.local_ids.tolist(), cols.values.tolist()):
        key = collector.table.keys[sid]
        assert key is not None, f"retired id {sid} emitted"
        assert key not in out, f"series {key} emitted twice in one pass"
        out[key] = v
    return out


def key(name: str, /, **tags: str):
    return (name, tuple(sorted(tags.items())))


def live_settings(**options):
    from ingress.collect.base import CollectorSettings

    return CollectorSettings(proc_root="/proc", sys_root="/sys", options=options)


def clk_tck() -> float:
    return float(os.sysconf("SC_CLK_TCK"))
