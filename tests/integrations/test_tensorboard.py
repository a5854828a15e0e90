"""TensorBoard: readings, doctor events and losses written by trainlab, read back with
TensorBoard's own EventAccumulator."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from trainlab.cli import main  # noqa: E402
from trainlab.errors import ConfigError  # noqa: E402
from trainlab.instruments import Monitor, preset  # noqa: E402
from trainlab.instruments.gradients import GradNorm  # noqa: E402
from trainlab.instruments.sharpness import Sharpness  # noqa: E402
from trainlab.integrations import event_text  # noqa: E402
from trainlab.integrations.tensorboard import EVENT_FILE, EVENT_TAG, TensorBoardLogger  # noqa: E402
from trainlab.train import Trainer  # noqa: E402
from trainlab.train.doctor import StallDoctor  # noqa: E402
from trainlab.train.trainer import TENSORBOARD_EPOCH, TENSORBOARD_STEP  # noqa: E402

from cli_checks import error_line  # noqa: E402
from schedule import due  # noqa: E402
from toys import linear_saddle, squared_error  # noqa: E402


def read_back(log_dir):
    """Every scalar and text TensorBoard finds in ``log_dir``: ``({tag: [(step, value)]}, {tag: [(step, text)]})``."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    found = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags["scalars"]}
    texts = {tag: [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
             for tag in tags["tensors"]}
    return found, texts


def f32(x):
    """What TensorBoard stores of a scalar: a float32."""
    return torch.tensor(x, dtype=torch.float32).item()


def test_a_plain_loop_s_readings_events_and_losses_read_back(tmp_path):
    """A stalled linear network (zero weights: a saddle) in a plain loop with a Monitor and the
    doctor: every reading, the escape event and each loss appear in TensorBoard at their update."""
    model, x, y = linear_saddle()
    with torch.no_grad():  # off the exact saddle, so gradient and sharpness readings are not all zero
        model[1].weight.fill_(0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = Monitor(instruments=[GradNorm(every=1), Sharpness(every=3)])
    doctor = StallDoctor(full_batch_window=5, min_rel_improvement=0.05)
    losses, events = {}, []
    with TensorBoardLogger(tmp_path / "tb") as tb:
        for step in range(1, 16):
            loss = squared_error(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[step] = loss.item()
            tb.scalars({"trainlab/train/loss": loss}, step)
            tb.readings(monitor.after_step(model, loss, squared_error, (x, y), opt), step)
            event = doctor.after_step(model, loss.item(), squared_error, (x, y), opt, full_batch=True)
            if event is not None:
                events.append((step, event))
                tb.event(event, step)
    scalars, texts = read_back(tmp_path / "tb")

    assert scalars["trainlab/train/loss"] == [(s, f32(v)) for s, v in losses.items()]
    for name in ("grad_norm", "sharpness"):
        expected = [(r.step, f32(r.value)) for r in monitor.history if r.instrument == name]
        assert scalars[f"trainlab/{name}"] == expected
        assert [step for step, _ in expected] == due(1 if name == "grad_norm" else 3, 15)  # update 1, then each period
    assert events, "the doctor should have treated the saddle"
    step, event = events[0]
    assert event["action"] == "escape" and event["applied"]
    assert texts[f"{EVENT_TAG}/text_summary"][0] == (step, event_text(event))
    assert "stall: " in event_text(event) and "escape" in event_text(event)
    assert scalars["trainlab/doctor/event"][0] == (step, 1.0)
    assert scalars["trainlab/doctor/applied"][0] == (step, 1.0)
    assert scalars["trainlab/doctor/loss_after"][0] == (step, f32(event["loss_after"]))
    assert scalars["trainlab/doctor/lambda_min"][0] == (step, f32(event["lambda_min"]))


def test_resume_hides_what_the_interrupted_run_wrote_after_its_checkpoint(tmp_path):
    """purge_step=S: TensorBoard shows each update once — the first run's values before S, the
    resumed run's from S on — even when both files open within the same second."""
    with TensorBoardLogger(tmp_path) as tb:
        for step in range(1, 11):
            tb.scalars({"loss": float(step)}, step)
    with TensorBoardLogger(tmp_path, purge_step=6) as tb:
        for step in range(6, 13):
            tb.scalars({"loss": 100.0 + step}, step)
    scalars, _ = read_back(tmp_path)
    assert scalars["loss"] == [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 13)]
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(EVENT_FILE))
    seconds = [int(name[len(EVENT_FILE):].split(".")[0]) for name in files]
    assert len(files) == 2 and seconds[0] < seconds[1]  # read in this order, as written


def test_non_finite_values_are_left_out_and_tensors_taken(tmp_path):
    with TensorBoardLogger(tmp_path) as tb:
        written = tb.scalars({"a": torch.tensor(2.5), "b": float("nan"), "c": None, "d": float("inf"), "e": 3}, 0)
        assert written == {"a": 2.5, "e": 3.0}
        assert tb.readings([{"instrument": "sharpness", "value": 7.0}, {"instrument": "units", "value": None}],
                           4) == {"trainlab/sharpness": 7.0}
    scalars, _ = read_back(tmp_path)
    assert scalars == {"a": [(0, 2.5)], "e": [(0, 3.0)], "trainlab/sharpness": [(4, 7.0)]}


@pytest.mark.parametrize("make, message", [
    (lambda d: TensorBoardLogger(3), "log_dir=3 is not allowed; expected a directory path"),
    (lambda d: TensorBoardLogger(""), "log_dir='' is not allowed"),
    (lambda d: TensorBoardLogger(d / "file"), "is a file; expected a directory"),
    (lambda d: TensorBoardLogger(d, purge_step=-1), "purge_step=-1 is not allowed; expected an update count"),
    (lambda d: TensorBoardLogger(d, flush_secs=0), "flush_secs=0 is not allowed; expected seconds > 0"),
    (lambda d: TensorBoardLogger(d).scalars({"a": 1.0}, 1.5), "step=1.5 is not allowed"),
    (lambda d: TensorBoardLogger(d).scalars({"a": 1.0}, True), "step=True is not allowed"),
    (lambda d: TensorBoardLogger(d).scalars({"a": "high"}, 1), "a='high' is not allowed; expected a number"),
    (lambda d: TensorBoardLogger(d).scalars([1.0], 1), "[1.0] is not allowed; expected a mapping"),
    (lambda d: TensorBoardLogger(d).event({"verdict": "saddle"}, -2), "step=-2 is not allowed"),
])
def test_bad_arguments_are_one_sentence(tmp_path, make, message):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError) as e:
        make(tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_closed_logger_refuses_to_write(tmp_path):
    tb = TensorBoardLogger(tmp_path)
    tb.close()
    tb.close()  # twice is fine
    tb.flush()
    with pytest.raises(ValueError, match="is closed; open a new one"):
        tb.scalars({"a": 1.0}, 1)


def test_without_tensorboard_the_message_names_the_pip_install():
    code = ("import sys; sys.modules['tensorboard'] = None\n"
            "try:\n    import trainlab.integrations.tensorboard\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""}).stdout.strip()
    assert out.startswith("trainlab.integrations.tensorboard needs the 'tensorboard' package")
    assert "pip install 'trainlab[tensorboard]'" in out and "\n" not in out



# ---------------------------------------------------------------- Trainer(tensorboard=DIR)
class Killed(BaseException):
    """The process dying (not an ``Exception``: a callback's errors become events and training goes on)."""


class CrashAt:
    """A callback that kills the run at update ``step``: the run dies between two checkpoints."""

    def __init__(self, step):
        self.at = step

    def on_step_end(self, trainer, record):
        if record["step"] == self.at:
            raise Killed("crash")


def saddle_trainer(out, board, epochs, callbacks=()):
    """Full-batch SGD (one update per epoch) on the zero-weight linear network, stuck until the
    doctor treats it, with a Monitor: loss, readings and an event to mirror."""
    model, x, y = linear_saddle()
    monitor = Monitor(instruments=[GradNorm(every=1), Sharpness(every=4)], progress=False)
    doctor = StallDoctor(full_batch_window=5)
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), squared_error, TensorDataset(x, y),
                   batch_size="full", epochs=epochs, callbacks=[monitor, doctor, *callbacks], out=out,
                   checkpoint_every=3, progress=False, tensorboard=board)


def lines(path):
    return [json.loads(line) for line in open(path)]


def test_the_trainer_mirrors_its_logs_to_tensorboard(tmp_path):
    """Every figure the run directory logs — step losses, epoch figures, readings, doctor events —
    is in TensorBoard at the same update, with the same value."""
    saddle_trainer(tmp_path / "run", tmp_path / "tb", epochs=14).fit()
    scalars, texts = read_back(tmp_path / "tb")
    steps = lines(tmp_path / "run" / "steps.jsonl")
    for key, name in TENSORBOARD_STEP.items():
        assert scalars[name] == [(r["step"], f32(r[key])) for r in steps]
    metrics = [r for r in lines(tmp_path / "run" / "metrics.jsonl") if "event" not in r]
    assert scalars[TENSORBOARD_EPOCH["train_loss"]] == [(r["step"], f32(r["train_loss"])) for r in metrics]
    assert TENSORBOARD_EPOCH["eval_loss"] not in scalars  # no eval data: nothing, not NaN
    readings = lines(tmp_path / "run" / "instruments.jsonl")
    for name in ("grad_norm", "sharpness"):
        assert scalars[f"trainlab/{name}"] == [(r["step"], f32(r["value"])) for r in readings
                                              if r["instrument"] == name]
    events = [r for r in lines(tmp_path / "run" / "metrics.jsonl") if "event" in r]
    assert events and events[0]["action"] == "escape"
    assert texts[f"{EVENT_TAG}/text_summary"] == [(e["step"], event_text(e)) for e in events]
    assert scalars["trainlab/doctor/lambda_min"] == [(e["step"], f32(e["lambda_min"])) for e in events]


def test_a_resumed_run_shows_each_update_once_as_an_uninterrupted_one(tmp_path):
    """A run that dies at update 8 (last checkpoint at 6) and is resumed: TensorBoard hides the
    dead run's updates 7 and 8 and shows exactly what an uninterrupted run shows."""
    saddle_trainer(tmp_path / "whole", tmp_path / "tb_whole", epochs=12).fit()
    with pytest.raises(Killed, match="crash"):
        saddle_trainer(tmp_path / "run", tmp_path / "tb", epochs=12, callbacks=[CrashAt(8)]).fit()
    crashed, _ = read_back(tmp_path / "tb")
    assert [s for s, _ in crashed["trainlab/train/loss"]] == list(range(1, 9))  # flushed although it died
    saddle_trainer(tmp_path / "run", tmp_path / "tb", epochs=12).fit(resume=True)
    (resumed, resumed_texts), (whole, whole_texts) = read_back(tmp_path / "tb"), read_back(tmp_path / "tb_whole")
    assert [s for s, _ in resumed["trainlab/train/loss"]] == list(range(1, 13))
    assert resumed == whole and resumed_texts == whole_texts


def test_bad_tensorboard_arguments_are_refused_before_anything_is_written(tmp_path):
    (tmp_path / "file").write_text("x")
    for value, message in [(3, "tensorboard=3 is not allowed; expected a directory path or None"),
                           (tmp_path / "file", "is a file; expected a directory for TensorBoard's event files")]:
        with pytest.raises(ConfigError, match=message):
            saddle_trainer(tmp_path / "run", value, epochs=1)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- trainlab train --tensorboard DIR
def trainlab(*args):
    """``trainlab ARGS`` in a fresh process (one thread), as a user runs it."""
    done = subprocess.run([sys.executable, "-m", "trainlab", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_trainlab_train_tensorboard_end_to_end_with_resume(tmp_path):
    run, board = tmp_path / "run", tmp_path / "tb"
    watch = ["--no-progress", "--monitor", "full", "--doctor", "--tensorboard", board]  # full: update_ratio every 10
    printed = trainlab("train", "--set", "data.name=iris", "--set", "train.batch_size=50", "--set", "train.epochs=2",
                       "--out", run, *watch)
    assert f"tensorboard --logdir {board}" in printed
    trainlab("train", "--resume", "--set", "train.epochs=4", "--out", run, *watch)
    scalars, _ = read_back(board)
    steps = lines(run / "steps.jsonl")
    assert [r["step"] for r in steps] == list(range(1, 13))  # iris: 120 training samples, 3 updates an epoch
    assert scalars["trainlab/train/loss"] == [(r["step"], f32(r["loss"])) for r in steps]
    metrics = [r for r in lines(run / "metrics.jsonl") if "event" not in r]
    assert scalars["trainlab/epoch/eval_accuracy"] == [(r["step"], f32(r["eval_accuracy"])) for r in metrics]
    readings = lines(run / "instruments.jsonl")
    # every instrument of the preset at update 1 (a baseline), then on its period: update_ratio's 10 in the resumed part
    expected = {inst.name: due(inst.every, 12) for inst in preset("full")}
    assert {name: [r["step"] for r in readings if r["instrument"] == name] for name in expected} == expected
    assert len(readings) == sum(map(len, expected.values())) and expected["update_ratio"] == [1, 10]
    assert scalars["trainlab/update_ratio"] == [(r["step"], f32(r["value"])) for r in readings
                                               if r["instrument"] == "update_ratio"]


@pytest.mark.parametrize("value, fragment", [
    ("file", "tensorboard='{}' is a file; expected a directory for TensorBoard's event files"),
    ("", "tensorboard='' is not allowed; expected a directory path or None"),
])
def test_a_bad_tensorboard_directory_is_one_line_and_exit_2(tmp_path, capsys, value, fragment):
    (tmp_path / "file").write_text("x")
    value = str(tmp_path / value) if value else value
    code = main(["train", "--set", "data.name=iris", "--no-progress", "--out", str(tmp_path / "run"),
                 "--tensorboard", value])
    line = error_line(capsys, code)
    assert line.startswith("trainlab train: error: ") and fragment.format(value) in line
    assert not (tmp_path / "run").exists()
