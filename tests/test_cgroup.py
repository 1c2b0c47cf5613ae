"""cgroup v2 limits read from a fixture tree shaped like /proc and /sys/fs/cgroup."""
from pathlib import Path

from hypothesis import given, settings, strategies as st

from ingress.cgroup import CgroupLimits, own_cgroup_dir, read_limits


def tree(tmp_path: Path, rel: str, files: dict[str, dict[str, str]]) -> tuple[str, str]:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(f"0::{rel}\n")
    cg = tmp_path / "cgroup"
    for d, content in files.items():
        p = cg / d.lstrip("/")
        p.mkdir(parents=True, exist_ok=True)
        for name, text in content.items():
            (p / name).write_text(text)
    (cg / rel.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return str(proc), str(cg)


def test_tightest_limit_along_the_path_counts(tmp_path):
    proc, cg = tree(tmp_path, "/system.slice/ingress.service", {
        "/system.slice": {"memory.max": "104857600\n", "cpu.max": "max 100000\n"},
        "/system.slice/ingress.service": {"memory.max": "max\n", "cpu.max": "20000 100000\n"},
    })
    lim = read_limits(proc, cg)
    assert lim.memory_bytes == 100 << 20
    assert lim.cpu_percent == 20.0
    assert lim.path.endswith("system.slice/ingress.service")


def test_unlimited_and_no_cgroup(tmp_path):
    proc, cg = tree(tmp_path, "/", {"/": {"memory.max": "max\n", "cpu.max": "max 100000\n"}})
    assert read_limits(proc, cg) == CgroupLimits(path=own_cgroup_dir(proc, cg))
    assert read_limits(str(tmp_path / "none"), cg) == CgroupLimits()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=40))
def test_any_file_content_gives_limits_or_none_never_an_error(tmp_path_factory, mem, cpu):
    base = tmp_path_factory.mktemp("cg")
    proc, cg = tree(base, "/a", {"/a": {}})
    (Path(cg) / "a" / "memory.max").write_bytes(mem)
    (Path(cg) / "a" / "cpu.max").write_bytes(cpu)
    lim = read_limits(proc, cg)
    assert lim.memory_bytes is None or lim.memory_bytes >= 0
    assert lim.cpu_percent is None or lim.cpu_percent >= 0


def test_this_machine_reads_without_error():
    lim = read_limits()
    assert isinstance(lim, CgroupLimits)
