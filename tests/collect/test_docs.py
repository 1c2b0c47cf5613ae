"""docs/collectors.md is the rendering of the collectors' declarations, nothing else."""
from pathlib import Path

from ingress.collect import COLLECTORS
from ingress.collect.docs import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "collectors.md"


def test_committed_doc_equals_rendering():
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/collectors.md is stale: run `python -m ingress.collect.docs docs/collectors.md`")


def test_rendering_lists_every_metric_and_option():
    text = render()
    for name, cls in COLLECTORS.items():
        assert f"\n## {name}\n" in text
        for m in cls.metrics:
            assert f"| `{m.name}` |" in text
        for o in cls.options:
            assert f"| `{o.name}` |" in text
