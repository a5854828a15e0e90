"""trainlab.integrations.lightning.TrainlabCallback in real Lightning runs (CPU, float64, no mocks).

Each value the callback logs is checked against a computation that does not go through trainlab:
PyTorch's autograd on the recorded parameters, a dense Hessian's eigenvalues, the closed-form
Hessian of least squares.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from schedule import due  # noqa: E402
from toys import linear_saddle, squared_error  # noqa: E402
from trainlab.errors import ConfigError  # noqa: E402
from trainlab.instruments import Monitor  # noqa: E402
from trainlab.integrations import event_text  # noqa: E402
from trainlab.instruments.gradients import GradNorm, UpdateRatio  # noqa: E402
from trainlab.instruments.sharpness import Sharpness  # noqa: E402
from trainlab.integrations.lightning import TrainlabCallback  # noqa: E402
from trainlab.train import StallDoctor  # noqa: E402
from trainlab.train.doctor.causes import CRAWL_TARGET

torch.set_num_threads(1)
WORKER = Path(__file__).with_name("lightning_ddp_worker.py")


class Regression(L.LightningModule):
    """``net`` fitted by least squares (``squared_error``) with SGD at ``lr``; ``schedule``: a
    constant ``LambdaLR``, stepped every update, whose ``base_lrs`` the doctor must rescale."""

    def __init__(self, net: nn.Module, lr: float, schedule: bool = False):
        super().__init__()
        self.net, self.lr, self.schedule = net, lr, schedule

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch["a"] if isinstance(batch, dict) else batch  # several loaders: train on "a"
        loss = squared_error(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        if not self.schedule:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Recorder(L.Callback):
    """The parameters (one vector) after every update, by ``global_step``."""

    def __init__(self):
        self.params: dict[int, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module):
        self.params[trainer.global_step] = parameters_to_vector(pl_module.parameters()).detach().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.params[trainer.global_step] = parameters_to_vector(pl_module.parameters()).detach().clone()


def tanh_mlp(seed: int = 0) -> nn.Module:
    """4 → 8 → 1, tanh, float64, weights drawn from a seeded generator (49 parameters)."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return net


def regression_data(n: int = 256, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return x, torch.sin(x @ torch.randn(4, 1, generator=gen, dtype=torch.float64))


def fit(module, data, tmp_path, callbacks=(), ckpt_path=None, **limits):
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="logs"),
                        callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, **limits)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer


def logged(trainer, name: str) -> dict[int, float]:
    """Column ``name`` of the CSV logger's metrics.csv, by step."""
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as f:
        return {int(row["step"]): float(row[name]) for row in csv.DictReader(f) if row.get(name)}


def loss_at(net: nn.Module, vector: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The least-squares loss of ``net`` with its parameters set to ``vector`` (a function of it)."""
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    parts, start = {}, 0
    for name, shape in zip(names, shapes):
        parts[name] = vector[start:start + shape.numel()].view(shape)
        start += shape.numel()
    return squared_error(functional_call(net, parts, (x,)), y)


def test_readings_reach_the_csv_logger_and_equal_autograd_and_a_dense_hessian(tmp_path):
    """200 updates, mini-batches of 32, readings at update 1 and every 10 updates (grad_norm,
    update_ratio) and every 50 (sharpness) on the first 64 samples: every one lands in metrics.csv, although
    Lightning itself writes step values only every log_every_n_steps = 50 updates."""
    x, y = regression_data()
    data = DataLoader(TensorDataset(x, y), batch_size=32)
    # Sharpness stops once its estimated error is below tol·|λ|: at its default tol (1e-4) the true error
    # sat at 0.97e-4 under ATEN_CPU_CAPABILITY=default, so the reading is converged to where float64 rounding
    # of the 64-sample Hessian is what remains (tol well above tolerance.tol(float64, 64 · 49 parameters))
    sharp_tol = 1e-10
    monitor = Monitor(every=10, sample=64, instruments=[GradNorm(), UpdateRatio(), Sharpness(every=50, tol=sharp_tol)])
    recorder = Recorder()
    trainer = fit(Regression(tanh_mlp(), lr=0.1), data, tmp_path,
                  [recorder, TrainlabCallback(monitor, loss_fn=squared_error)], max_steps=200)

    grad_norm, ratio, sharpness = (logged(trainer, f"trainlab/{n}") for n in ("grad_norm", "update_ratio", "sharpness"))
    # read at update 1 (a baseline) and on each period; a reading after update k sits in Lightning's row of
    # that update's training_step: step k - 1
    assert sorted(grad_norm) == sorted(ratio) == [k - 1 for k in due(10, 200)]
    assert sorted(sharpness) == [k - 1 for k in due(50, 200)]
    assert set(trainer.callback_metrics) >= {"trainlab/grad_norm", "trainlab/update_ratio", "trainlab/sharpness"}
    net, xs, ys = tanh_mlp(), x[:64], y[:64]
    for row, value in grad_norm.items():
        theta = recorder.params[row + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_at(net, theta, xs, ys), theta)
        assert value == pytest.approx(g.norm().item(), rel=1e-12)
        before, after = recorder.params[row], recorder.params[row + 1]
        assert ratio[row] == pytest.approx(((after - before).norm() / after.norm()).item(), rel=1e-12)
    for row, value in sharpness.items():
        hessian = torch.autograd.functional.hessian(lambda t: loss_at(net, t, xs, ys), recorder.params[row + 1])
        # the stopping rule's error is an estimate: a decade of margin on it
        assert value == pytest.approx(torch.linalg.eigvalsh(hessian)[-1].item(), rel=10 * sharp_tol)

    # the readings left the run alone: the same fit without the callback ends on the same bits
    bare = Recorder()
    fit(Regression(tanh_mlp(), lr=0.1), data, tmp_path / "bare", [bare], max_steps=200)
    assert torch.equal(bare.params[200], recorder.params[200])


@pytest.mark.parametrize("batch, accumulate", [(64, 1), (32, 2)])
def test_doctor_escapes_a_planted_saddle_and_the_loss_then_falls(tmp_path, batch, accumulate):
    """Both layers of a linear network start at zero: the gradient is exactly zero, plain SGD
    never moves (the control run), the doctor finds the saddle and steps out along λ_min < 0.
    Every update sees all 64 samples: in one batch, or in two accumulated ones."""
    model, x, y = linear_saddle(64)
    data = DataLoader(TensorDataset(x, y), batch_size=batch)
    initial = squared_error(model(x), y).item()
    doctor = StallDoctor()
    trainer = fit(Regression(model, lr=0.1), data, tmp_path, [TrainlabCallback(doctor=doctor, loss_fn=squared_error)],
                  max_steps=150, log_every_n_steps=1, accumulate_grad_batches=accumulate)

    assert len(doctor.events) == 1
    event = doctor.events[0]
    assert (event["verdict"], event["action"], event["applied"], event["full_batch"]) == ("saddle", "escape", True, True)
    assert event["lambda_min"] < 0 and event["step"] == 31  # 30 flat full-batch losses, then the test holds
    final = squared_error(trainer.lightning_module(x), y).item()
    assert final < 1e-3 * initial
    if accumulate > 1:
        return
    losses = logged(trainer, "train_loss")
    assert all(losses[s] == initial for s in range(event["step"]))  # stalled until the doctor came
    assert logged(trainer, "trainlab/doctor/applied") == {30: 1.0}
    assert logged(trainer, "trainlab/doctor/loss_after")[30] == pytest.approx(event["loss_after"])

    control, _, _ = linear_saddle(64)
    control_trainer = fit(Regression(control, lr=0.1), data, tmp_path / "control", max_steps=150, log_every_n_steps=1)
    assert set(logged(control_trainer, "train_loss").values()) == {initial}


def test_doctor_raises_a_crawling_step_through_lightnings_optimizer_and_scheduler(tmp_path):
    """Least squares at η = 1e-5: a crawl. The doctor sets η = CRAWL_TARGET/λ_max (λ_max of the closed-form
    Hessian 2XᵀX/n) in the optimizer and in the schedule's base_lrs, so the LambdaLR Lightning
    steps every update keeps it, and the loss then falls."""
    x, y = regression_data(128)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    module = Regression(model, lr=1e-5, schedule=True)
    doctor = StallDoctor()
    trainer = fit(module, DataLoader(TensorDataset(x, y), batch_size=128), tmp_path,
                  [TrainlabCallback(doctor=doctor, loss_fn=squared_error)], max_steps=100, log_every_n_steps=1)

    lam_max = torch.linalg.eigvalsh(2 * x.T @ x / len(x))[-1].item()
    events = [e for e in doctor.events if e["applied"]]
    assert events and events[0]["action"].startswith("raise η")
    assert events[0]["lr_after"] == pytest.approx(CRAWL_TARGET / lam_max, rel=1e-6)
    optimizer, scheduler = trainer.optimizers[0], trainer.lr_scheduler_configs[0].scheduler
    assert optimizer.param_groups[0]["lr"] == pytest.approx(CRAWL_TARGET / lam_max, rel=1e-6)  # the schedule kept it
    assert scheduler.base_lrs[0] == optimizer.param_groups[0]["lr"]
    losses = logged(trainer, "train_loss")
    assert losses[99] < 1e-6 * losses[events[0]["step"] - 1]


def test_resume_from_a_lightning_checkpoint_keeps_the_callbacks_state(tmp_path):
    """Stopped after 20 of 60 updates and resumed from the checkpoint, the run reads and treats
    exactly as the uninterrupted one: the doctor's loss window (the planted saddle is found at
    update 31, not 20 updates after the resume) and the Monitor's kept parameters (update_ratio
    at update 21) travel in the checkpoint."""

    def callback():
        monitor = Monitor(every=1, sample=64, instruments=[GradNorm(every=5), UpdateRatio(), Sharpness(every=10)])
        return TrainlabCallback(monitor, StallDoctor(), loss_fn=squared_error)

    def run(path, steps, ckpt=None, cb=None):
        cb = cb or callback()
        model, x, y = linear_saddle(64)
        trainer = fit(Regression(model, lr=0.1), DataLoader(TensorDataset(x, y), batch_size=64), path, [cb],
                      ckpt_path=ckpt, max_steps=steps)
        return trainer, cb

    def history(cb):
        return [(r.step, r.instrument, r.value) for r in cb.monitor.history]

    whole_trainer, whole = run(tmp_path / "whole", 60)
    first_trainer, _ = run(tmp_path / "first", 20)
    first_trainer.save_checkpoint(tmp_path / "at20.ckpt")
    resumed_trainer, resumed = run(tmp_path / "resumed", 60, tmp_path / "at20.ckpt")

    assert [e["step"] for e in resumed.doctor.events] == [e["step"] for e in whole.doctor.events] == [31]
    assert resumed.doctor.events[0]["loss_after"] == whole.doctor.events[0]["loss_after"]
    after = [r for r in history(whole) if r[0] > 20]
    assert history(resumed)[0][:2] == (21, "update_ratio") and len(history(resumed)) == len(after)
    for (step, name, value), (step2, name2, value2) in zip(history(resumed), after):
        assert (step, name) == (step2, name2)
        assert value == value2 or (math.isnan(value) and math.isnan(value2))
    assert torch.equal(parameters_to_vector(resumed_trainer.lightning_module.parameters()),
                       parameters_to_vector(whole_trainer.lightning_module.parameters()))

    # the control: the same checkpoint without the callback's state finds the saddle 31 updates after the resume
    ckpt = torch.load(tmp_path / "at20.ckpt", weights_only=False)
    ckpt["callbacks"] = {}
    torch.save(ckpt, tmp_path / "bare.ckpt")
    _, forgetful = run(tmp_path / "forgetful", 60, tmp_path / "bare.ckpt")
    assert [e["step"] for e in forgetful.doctor.events] == [51]


@pytest.mark.slow
def test_ddp_two_ranks_log_the_readings_of_one_process_on_the_same_global_batch(tmp_path):
    """strategy="ddp", two CPU processes (gloo), 16 samples per rank per update, readings on 32
    samples per rank; one process, 32 per update, readings on 64: the same readings (float64, 1e-8)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(WORKER), "ddp", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("lightning_ddp_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    worker.main("single", tmp_path)
    single = json.loads((tmp_path / "single0.json").read_text())
    ranks = [json.loads((tmp_path / f"ddp{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # both ranks hold identical readings
    assert {r["instrument"] for r in single} == {"grad_norm", "update_ratio", "units", "sharpness", "stability",
                                                 "noise_scale", "gsnr", "trace"}
    assert not any(r["error"] for r in single + ranks[0])
    # the noise readings' batch is the samples per update of all ranks
    assert {r["batch_size"] for r in ranks[0] if r["instrument"] == "noise_scale"} == {32}
    assert [(r["step"], r["instrument"]) for r in ranks[0]] == [(r["step"], r["instrument"]) for r in single]
    for got, want in zip(ranks[0], single):
        assert got["value"] == pytest.approx(want["value"], rel=1e-8), (got, want)
    logged_ddp = {}
    with open(tmp_path / "ddp" / "logs" / "version_0" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            logged_ddp.update({(int(row["step"]) + 1, k[9:]): float(v) for k, v in row.items()
                               if k.startswith("trainlab/") and v})
    assert logged_ddp == {(r["step"], r["instrument"]): r["value"] for r in ranks[0] if math.isfinite(r["value"])}


@pytest.mark.parametrize("kwargs, message", [
    ({}, "monitor and doctor are both None"),
    ({"monitor": "economy"}, "monitor='economy' is not allowed"),
    ({"doctor": object()}, "doctor=<object object"),
    ({"monitor": Monitor(), "loss_fn": "mse"}, "loss_fn='mse' is not callable"),
    ({"monitor": Monitor()}, "exactly one of loss_fn"),
    ({"monitor": Monitor(), "loss_fn": squared_error, "batch_loss": lambda m, b: m(b)}, "got both"),
    ({"monitor": Monitor(batch_loss=lambda m, b: m(b)), "batch_loss": lambda m, b: m(b)}, "are not one function"),
    ({"monitor": Monitor(batch_loss=lambda m, b: m(b)), "doctor": StallDoctor(batch_loss=lambda m, b: m(b))},
     "are not one function"),
])
def test_bad_arguments_are_one_clear_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        TrainlabCallback(**kwargs)
    assert "\n" not in str(e.value)


def test_several_training_loaders_ask_for_data(tmp_path):
    x, y = regression_data(64)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    callback = TrainlabCallback(Monitor(every=1, instruments=[GradNorm()]), loss_fn=squared_error)
    with pytest.raises(ConfigError, match="trains on a dict, not one DataLoader; pass data="):
        fit(Regression(tanh_mlp(), lr=0.1), {"a": loader, "b": loader}, tmp_path, [callback], max_steps=2)
    # with data= it reads there
    callback = TrainlabCallback(Monitor(every=1, instruments=[GradNorm()]), loss_fn=squared_error, data=(x, y))
    fit(Regression(tanh_mlp(), lr=0.1), {"a": loader, "b": loader}, tmp_path, [callback], max_steps=2)
    assert [r.step for r in callback.monitor.history] == [1, 2]


def test_dict_batches_through_batch_loss_read_and_treat_as_pairs_through_loss_fn(tmp_path):
    """The planted saddle once as (x, y) pairs with loss_fn and once as {"x", "y"} dicts with
    batch_loss: the same readings, the same event, the same final parameters."""

    class DictRegression(Regression):
        def training_step(self, batch, batch_idx):
            return squared_error(self(batch["x"]), batch["y"])

    def batch_loss(module, batch):
        return squared_error(module(batch["x"]), batch["y"])

    runs = []
    for form in ("pair", "dict"):
        model, x, y = linear_saddle(64)
        monitor = Monitor(every=5, sample=64, instruments=[GradNorm(), Sharpness(every=10)])
        if form == "pair":
            module, data = Regression(model, lr=0.1), TensorDataset(x, y)
            callback = TrainlabCallback(monitor, StallDoctor(), loss_fn=squared_error)
        else:
            module, data = DictRegression(model, lr=0.1), [{"x": a, "y": b} for a, b in zip(x, y)]
            callback = TrainlabCallback(monitor, StallDoctor(), batch_loss=batch_loss)
        trainer = fit(module, DataLoader(data, batch_size=64), tmp_path / form, [callback], max_steps=50)
        runs.append((callback, parameters_to_vector(trainer.lightning_module.parameters())))
    (pair, pair_params), (as_dict, dict_params) = runs
    assert as_dict.monitor.batch_loss is as_dict.doctor.batch_loss  # given once, used by both
    assert [(r.step, r.instrument, r.value) for r in as_dict.monitor.history] == \
        [(r.step, r.instrument, r.value) for r in pair.monitor.history]
    assert [(e["step"], e["action"], e["loss_after"]) for e in as_dict.doctor.events] == \
        [(e["step"], e["action"], e["loss_after"]) for e in pair.doctor.events] != []
    assert torch.equal(dict_params, pair_params)


def test_doctor_events_reach_tensorboard_as_text_and_scalars(tmp_path):
    """With Lightning's TensorBoardLogger the event's one line is a text summary, read back with
    TensorBoard's own EventAccumulator, beside its scalars."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from lightning.pytorch.loggers import TensorBoardLogger

    model, x, y = linear_saddle(64)
    doctor = StallDoctor()
    trainer = L.Trainer(accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="tb"), max_steps=40,
                        callbacks=[TrainlabCallback(doctor=doctor, loss_fn=squared_error)], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Regression(model, lr=0.1), DataLoader(TensorDataset(x, y), batch_size=64))

    events = event_accumulator.EventAccumulator(trainer.logger.log_dir, size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    (text,) = events.Tensors("trainlab/doctor/text_summary")
    assert text.step == 30 and text.tensor_proto.string_val[0].decode() == event_text(doctor.events[0])
    assert [(s.step, s.value) for s in events.Scalars("trainlab/doctor/applied")] == [(30, 1.0)]


def test_without_lightning_the_import_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)  # as if the package were not installed
    monkeypatch.delitem(sys.modules, "trainlab.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install 'trainlab\[lightning\]'") as e:
        importlib.import_module("trainlab.integrations.lightning")
    assert "\n" not in str(e.value)


class TwoOptimizers(L.LightningModule):
    """Manual optimization (issue 21): two heads, each with its own SGD (different rates), both
    stepped in every batch, so ``global_step`` moves by two per batch."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = tanh_mlp(0), tanh_mlp(1)

    def forward(self, x):
        return self.a(x) + self.b(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_a, opt_b = self.optimizers()
        loss = squared_error(self(x), y)
        opt_a.zero_grad()
        opt_b.zero_grad()
        self.manual_backward(loss)
        opt_a.step()
        opt_b.step()
        return loss

    def configure_optimizers(self):
        return [torch.optim.SGD(self.a.parameters(), lr=0.05), torch.optim.SGD(self.b.parameters(), lr=0.02)]


class ByBatch(L.Callback):
    """Every trainable parameter tensor after every training batch (and at the start), in order."""

    def __init__(self):
        self.params: list[dict[str, torch.Tensor]] = []

    def snap(self, module):
        self.params.append({n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad})

    def on_train_start(self, trainer, pl_module):
        self.snap(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.snap(pl_module)


@pytest.mark.parametrize("every", [1, 2, 3])
def test_manual_optimization_with_two_optimizers_reads_update_ratio_per_update(tmp_path, every):
    """issue 21: with two optimizers stepping per batch, global_step moves by two, and
    update_ratio read every 2 or 3 updates never found the parameters it needs. Each reading is
    ‖Δθ‖/‖θ‖ over both optimizers' parameters, per tensor and as one vector, from the recorded
    parameters (float64: the ratios agree to 1e-12)."""
    x, y = regression_data(64)
    recorder = ByBatch()
    monitor = Monitor(every=every, sample=64, instruments=[UpdateRatio()], progress=False)
    fit(TwoOptimizers(), DataLoader(TensorDataset(x, y), batch_size=16), tmp_path,
        [recorder, TrainlabCallback(monitor, loss_fn=squared_error)], max_steps=24)  # 12 batches, 24 steps
    assert len(recorder.params) == 13
    readings = [r for r in monitor.history if r.instrument == "update_ratio"]
    assert [r.step for r in readings] == due(every, 12)  # update 1 (a baseline) and each multiple of every
    for r in readings:
        before, after = recorder.params[r.step - 1], recorder.params[r.step]
        parts = {n: float((after[n] - before[n]).norm() / after[n].norm()) for n in after}
        assert set(parts) == set(r.extra["parts"]) and any(n.startswith("a.") for n in parts) \
            and any(n.startswith("b.") for n in parts)
        for name, expected in parts.items():
            assert r.extra["parts"][name] == pytest.approx(expected, rel=1e-12)
        delta = torch.cat([(after[n] - before[n]).reshape(-1) for n in after])
        size = torch.cat([after[n].reshape(-1) for n in after])
        assert r.value == pytest.approx(float(delta.norm() / size.norm()), rel=1e-12)
        assert r.value > 0


def test_a_lightning_checkpoint_with_the_callback_loads_with_weights_only(tmp_path):
    """issue 21: the callback's part of a Lightning checkpoint is tensors and plain types, so the
    whole checkpoint loads with torch.load(weights_only=True), and resuming from it with
    weights_only=True reads update_ratio at the update an uninterrupted run does."""
    x, y = regression_data(64)

    def callback():
        return TrainlabCallback(Monitor(every=1, sample=64, instruments=[GradNorm(), UpdateRatio(every=2),
                                                                         Sharpness(every=3)], progress=False),
                                StallDoctor(window=10), loss_fn=squared_error)

    first = callback()
    trainer = fit(Regression(tanh_mlp(), lr=0.05), DataLoader(TensorDataset(x, y), batch_size=16), tmp_path / "a",
                  [first], max_steps=5)
    trainer.save_checkpoint(tmp_path / "at5.ckpt")
    saved = torch.load(tmp_path / "at5.ckpt", weights_only=True)["callbacks"]["TrainlabCallback"]
    assert saved["updates"] == 5 and saved["monitor"]["step"] == 5
    resumed = callback()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[resumed], max_steps=8)
    trainer.fit(Regression(tanh_mlp(), lr=0.05), DataLoader(TensorDataset(x, y), batch_size=16),
                ckpt_path=tmp_path / "at5.ckpt", weights_only=True)
    assert [(r.step, r.instrument) for r in resumed.monitor.history] == [
        (6, "grad_norm"), (6, "update_ratio"), (6, "sharpness"), (7, "grad_norm"), (8, "grad_norm"),
        (8, "update_ratio")]
