"""A dead letter is written whole, or not at all, through ``ingress._fs.write_atomic``."""
from __future__ import annotations

import json
import os

from ingress.security.crypto import open_dead_letter
from short_writes import shorten_tmp_writes

from .test_deadletter_sealed import dead_letter_everything


def test_dead_letters_are_whole_after_short_writes(tmp_path, monkeypatch):
    asked = shorten_tmp_writes(monkeypatch, 7)
    sent, folder = dead_letter_everything(tmp_path, "acme", encrypt=False)
    monkeypatch.undo()
    assert max(asked) > 7
    for bid, data in sent:
        assert open_dead_letter((folder / f"{bid.hex()}.batch").read_bytes(), None) == data
        assert json.loads((folder / f"{bid.hex()}.json").read_text())["batch_id"] == bid.hex()
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]
