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


def test_a_callback_state_torch_cannot_read_back_safely_is_refused_when_saved(tmp_path):
    """A user's callback whose state_dict holds NumPy values is saved as plain values (the same
    numbers), and one holding an object is refused in one sentence at the save, never written as a
    checkpoint that torch.load(weights_only=True) could not read at resume (issue 21)."""
    import numpy as np
    import pytest
    import torch
    from torch.utils.data import TensorDataset

    import trainlab as tl
    from trainlab.errors import ConfigError

    class Keeps:
        def __init__(self, value):
            self.value, self.loaded = value, None

        def state_dict(self):
            return {"kept": self.value}

        def load_state_dict(self, state):
            self.loaded = state["kept"]

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g))

    def trainer(out, callback):
        model = tl.nn.mlp(4, [5], 3, seed=0)
        return tl.train.Trainer(model, tl.optim.SGD(model.parameters(), lr=0.1), tl.nn.cross_entropy, data,
                                batch_size=8, epochs=1, out=out, callbacks=[callback], progress=False, device="cpu")

    numpy_state = Keeps({"count": np.int64(7), "curve": np.arange(3.0)})
    trainer(tmp_path / "a", numpy_state).fit()
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    kept = state["callbacks"][0]["kept"]
    assert kept["count"] == 7 and type(kept["count"]) is int
    assert torch.equal(kept["curve"], torch.arange(3.0, dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"the Keeps callback's state\['kept'\] holds a .*object.*weights_only=True"):
        trainer(tmp_path / "b", Keeps(object())).fit()
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
