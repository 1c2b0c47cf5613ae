import subprocess
import sys

import ingress
from ingress._core import _ring


def test_installed_not_source_tree():
    # The suite must exercise the installed wheel, not src/.
    assert "site-packages" in ingress.__file__


def test_version_cli():
    out = subprocess.run([sys.executable, "-m", "ingress", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip() == f"ingress {ingress.__version__}"


def test_sample_struct_size():
    assert _ring.sample_size() == 24


def test_a_short_run_of_the_default_configuration_collects(tmp_path):
    """The first pass comes at start, not one 10 s interval later (newcomer polish, issue 11)."""
    import subprocess
    import sys

    from ingress import config
    from ingress.outputs.file import read_batches

    text = config.default_text() + '\n[control]\nlisten = "127.0.0.1:0"\n'  # the default, on a free port
    assert config.loads(text).agent.interval_s == 10.0
    cfg = tmp_path / "default.toml"
    cfg.write_text(text)
    r = subprocess.run([sys.executable, "-m", "ingress", "run", "-c", str(cfg), "--duration", "3"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "ingress-data" / "out" / "default").glob("*.ibatch"))
    assert files and sum(1 for f in files for _ in read_batches(f)) >= 1
