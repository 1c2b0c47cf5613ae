"""Issue 9's structural rule: no product module over 600 lines.

The Cython codec and procfs reader (ext/, compiled) are the only files allowed
to be larger; every Python module of the installed package is held to it, so
a module that grows past it is split along its seams (docs/architecture.md,
module map) rather than left to grow.
"""
from pathlib import Path

import ingress

MAX_LINES = 600


def test_no_python_module_of_the_package_is_over_600_lines():
    root = Path(ingress.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 50  # the installed package, not an empty directory
    over = {str(p.relative_to(root)): n for p in modules
            if (n := len(p.read_text("utf-8").splitlines())) > MAX_LINES}
    assert not over, f"split these along their seams: {over}"
