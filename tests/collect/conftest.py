import pytest

from collect_helpers import Tree


@pytest.fixture
def tree(tmp_path):
    """``tree("host-a")``: a writable copy of a golden /proc (+ /sys) snapshot."""
    return lambda name: Tree(tmp_path, name)
