"""An error inside a callback never ends the user's training: in the Trainer, the HF and the
Lightning callbacks it becomes a ``callback_error`` event with its sentence, and training goes on."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import trainlab as tl
from trainlab.train.callbacks import error_event


class Failing:
    """A callback whose every update raises, as a reading hitting vmap on mask code did."""

    def __init__(self):
        self.calls = 0

    def on_step_end(self, trainer, record):
        self.calls += 1
        raise RuntimeError("vmap: It looks like you're calling .item() on a Tensor\nsecond line")


def test_a_callback_error_in_the_trainer_is_one_event_and_training_goes_on(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
    model = nn.Linear(4, 3)
    failing = Failing()
    trainer = tl.train.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, data,
                               batch_size=16, epochs=3, callbacks=[failing], out=tmp_path, progress=False, seed=0)
    summary = trainer.fit()
    assert summary["status"] == "completed" and trainer.step == 12 and failing.calls == 12
    (event,) = [e for e in trainer.events if e["event"] == "callback_error"]  # once per message
    assert event["step"] == 1 and event["error"] == "RuntimeError" and "\n" not in event["message"]
    assert event["message"].startswith("callback Failing.on_step_end failed (RuntimeError: vmap:")
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["message"] for line in lines if line.get("event") == "callback_error"] == [event["message"]]


def test_error_event_is_one_line_with_the_step_and_the_traceback_in_the_debug_log(caplog):
    try:
        raise ValueError("a\nb " + "x" * 400)
    except ValueError as e:
        with caplog.at_level("DEBUG", logger="trainlab"):
            event = error_event("the Monitor", e, step=7)
    assert event["step"] == 7 and event["source"] == "the Monitor" and "\n" not in event["message"]
    assert len(event["message"]) < 400 and "ValueError: a b xxx" in event["message"]
    assert "Traceback" in caplog.text and "ValueError" in caplog.text
