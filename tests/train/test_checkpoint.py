import json
import math

import pytest
import torch

from trainlab.train import checkpoint


def test_round_trip(tmp_path):
    obj = {"w": torch.randn(3, 4), "step": 7, "nested": {"rng": torch.get_rng_state()}}
    checkpoint.save(obj, tmp_path / "c.pt")
    back = checkpoint.load(tmp_path / "c.pt")
    assert torch.equal(back["w"], obj["w"]) and back["step"] == 7
    assert torch.equal(back["nested"]["rng"], obj["nested"]["rng"])


def test_crash_mid_write_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save({"step": 1, "w": torch.ones(1000)}, path)

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    back = checkpoint.load(path)
    assert back["step"] == 1 and torch.equal(back["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_interrupt_mid_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save({"step": 1}, path)

    def interrupted_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"step": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1


def test_write_json_turns_non_finite_into_null(tmp_path):
    checkpoint.write_json({"a": math.nan, "b": [1.0, math.inf], "c": 2}, tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": None, "b": [1.0, None], "c": 2}
