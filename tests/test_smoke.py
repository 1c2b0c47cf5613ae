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
