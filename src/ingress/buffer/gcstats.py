"""Keep the cyclic garbage collector out of the steady state, and measure it.

The agent builds its long-lived structures (rings, registries, collectors,
outputs) at start-up and then allocates nothing per sample. ``freeze_long_lived``
moves everything alive at that point into the permanent generation, so later
collections no longer walk it: their pauses stay short however large the start-up
heap was. ``gc_pause_stats`` reports the pauses that remain (a self-metric).
"""
from __future__ import annotations

import gc
import threading
import time

__all__ = ["GcPauseStats", "freeze_long_lived", "gc_pause_stats"]


class GcPauseStats:
    """Collector pauses per generation, recorded through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_s = [0.0, 0.0, 0.0]
        self.max_s = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self._start = 0.0
        self._lock = threading.Lock()

    def _callback(self, phase: str, info: dict) -> None:
        # Runs inside the collector, with the GIL held: collections never overlap.
        if phase == "start":
            self._start = time.perf_counter()
            return
        dt = time.perf_counter() - self._start
        g = info.get("generation", 2)
        self.count[g] += 1
        self.total_s[g] += dt
        if dt > self.max_s[g]:
            self.max_s[g] = dt
        self.collected[g] += info.get("collected", 0)

    @property
    def installed(self) -> bool:
        return self._callback in gc.callbacks

    def install(self) -> None:
        """Start recording (idempotent)."""
        with self._lock:
            if self._callback not in gc.callbacks:
                gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        """Stop recording (idempotent)."""
        with self._lock:
            while self._callback in gc.callbacks:
                gc.callbacks.remove(self._callback)

    def snapshot(self) -> dict[int, dict[str, float]]:
        """``{generation: {"count", "total_s", "max_s", "collected"}}``, cumulative."""
        return {g: {"count": self.count[g], "total_s": self.total_s[g],
                    "max_s": self.max_s[g], "collected": self.collected[g]}
                for g in range(3)}


_STATS = GcPauseStats()


def gc_pause_stats() -> dict[int, dict[str, float]]:
    """Cumulative collector pauses per generation since recording began.

    The first call starts recording (``freeze_long_lived`` does too), so call it
    once at start-up.

    Returns
    -------
    dict
        ``{0: {"count": int, "total_s": float, "max_s": float, "collected": int}, 1: ..., 2: ...}``
    """
    _STATS.install()
    return _STATS.snapshot()


def freeze_long_lived() -> int:
    """Collect once, then move every live object to the permanent generation.

    Call after start-up, when the long-lived structures exist. Also starts
    recording collector pauses.

    Returns
    -------
    int
        Objects now frozen (``gc.get_freeze_count()``).
    """
    _STATS.install()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
