"""Shared benchmark options.

``--bench-short`` (used by ``make test`` and so by CI) runs each benchmark with
few rounds and smaller inputs; regression floors are ratios measured within the
same run, never absolute times.
"""
from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption("--bench-short", action="store_true", default=False,
                     help="few rounds, small inputs: the CI mode with regression floors")


@pytest.fixture(scope="session")
def bench_short(request) -> bool:
    return bool(request.config.getoption("--bench-short"))


@pytest.fixture
def bench(benchmark, bench_short):
    """``bench(fn, *args)`` -> (result, median seconds), rounds chosen by mode."""

    def run(fn, *args):
        rounds = 5 if bench_short else 30
        result = benchmark.pedantic(fn, args=args, rounds=rounds, iterations=1, warmup_rounds=1)
        return result, benchmark.stats.stats.median

    return run


# Ratios measured within one run are collected here and printed at the end, so the
# CI log carries the same table as docs/benchmarks.md.
RATIOS: list[tuple[str, float, float]] = []


@pytest.fixture(scope="module")
def listener():
    """A local TCP service that accepts and closes, as a real one would; yields its port.

    For health checks: a listener that never accepts fills its backlog, and the
    checks would then spend the run timing out.
    """
    import socket
    import threading

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    s.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                s.accept()[0].close()
            except OSError:
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield s.getsockname()[1]
    stop.set()
    t.join()
    s.close()


def record_ratio(name: str, ratio: float, floor: float) -> None:
    RATIOS.append((name, ratio, floor))
    assert ratio >= floor, f"{name}: ratio {ratio:.2f} fell below its regression floor {floor:.2f}"


def pytest_terminal_summary(terminalreporter):
    if RATIOS:
        terminalreporter.section("benchmark ratios (same run)")
        for name, ratio, floor in RATIOS:
            terminalreporter.write_line(f"{name:<60} {ratio:8.2f}x  (floor {floor:.2f}x)")
