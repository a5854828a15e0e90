import json
import math
import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import trainlab as tl
from trainlab.errors import ConfigError, DivergenceError
from trainlab.train import Callback, Trainer
from trainlab.train import checkpoint

from callbacks import InterruptAt
from tolerance import tol

TIME_KEYS = {"seconds", "seconds_per_update", "total_seconds"}


def dropout_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))


def make(train, epochs=3, out=None, model=None, lr=0.05, batch_size=50, schedule=True, **kw):
    model = model if model is not None else dropout_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 0.01 * t)) if schedule else None
    return Trainer(model, opt, F.cross_entropy, train, batch_size=batch_size, epochs=epochs, scheduler=sched,
                   out=out, progress=False, **{"device": "cpu", **kw})


def without_times(records):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in records]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mlp_reaches_95_percent_on_digits(digits):
    train, test = digits
    model = tl.nn.mlp(64, [32], 10, seed=0)
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-3), tl.nn.cross_entropy, train,
                      batch_size=32, epochs=30, eval_data=test, progress=False)
    summary = trainer.fit()
    assert summary["eval_accuracy"] >= 0.95
    assert summary["status"] == "completed" and summary["epochs"] == 30 and summary["steps"] == 30 * 45


def test_matches_a_hand_written_loop_bit_for_bit(digits):
    """The documented contract: one permutation per epoch from Generator().manual_seed(seed),
    batches in order (the last one short), a scheduler step per update."""
    train, _ = digits
    trainer = make(train, epochs=2, seed=5)
    trainer.fit()

    model = dropout_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 0.01 * t))
    gen = torch.Generator().manual_seed(5)
    x, y = train.tensors
    losses, norms, lrs = [], [], []
    with torch.random.fork_rng():
        torch.manual_seed(5)
        for _ in range(2):
            perm = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), 50):
                idx = perm[start:start + 50]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                losses.append(loss.item())
                norms.append(torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters())).item())
                lrs.append(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
    for a, b in zip(trainer.model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert trainer.step == len(losses) == 2 * math.ceil(len(x) / 50)
    assert trainer.history[-1]["lr"] == opt.param_groups[0]["lr"]
    # per-epoch train_loss is the sample-weighted mean of the batch losses
    sizes = [50] * 28 + [len(x) - 28 * 50]
    assert trainer.history[0]["train_loss"] == pytest.approx(sum(l * n for l, n in zip(losses, sizes)) / len(x))
    # the trainer's float32 norm over every parameter against the float64 one here
    n_params = sum(p.numel() for p in model.parameters())
    assert trainer.history[0]["grad_norm"] == pytest.approx(sum(norms[:29]) / 29, rel=tol(torch.float32, n_params))


def test_step_records_reach_callbacks_and_steps_jsonl(digits, tmp_path):
    train, _ = digits
    seen = []

    class Spy(Callback):
        def on_step_end(self, trainer, record):
            seen.append(dict(record))

    make(train, epochs=2, out=tmp_path / "run", callbacks=[Spy()]).fit()
    assert seen == read_jsonl(tmp_path / "run" / "steps.jsonl")
    assert [r["step"] for r in seen] == list(range(1, 59))
    assert all(r["lr"] == pytest.approx(0.05 / (1 + 0.01 * (r["step"] - 1))) for r in seen)
    assert all(r["grad_norm"] > 0 and math.isfinite(r["loss"]) for r in seen)


def test_full_batch_is_gradient_descent(digits):
    train, _ = digits
    model = tl.nn.mlp(64, [16], 10, seed=1).double()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy,
                      torch.utils.data.TensorDataset(train.tensors[0].double(), train.tensors[1]),
                      batch_size="full", epochs=5, progress=False, device="cpu")
    trainer.fit()
    assert trainer.steps_per_epoch == 1 and trainer.step == 5

    reference = tl.nn.mlp(64, [16], 10, seed=1).double()
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    x, y = train.tensors[0].double(), train.tensors[1]
    for _ in range(5):  # plain gradient descent on the whole training set
        opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        opt.step()
    for a, b in zip(trainer.model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_run_directory_files(digits, tmp_path):
    train, test = digits
    out = tmp_path / "run"
    trainer = make(train, epochs=3, out=out, eval_data=test)
    summary = trainer.fit()
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert {"epoch", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "seconds"} <= set(m)
        assert 0 <= m["eval_accuracy"] <= 1 and m["seconds"] > 0 and m["seconds_per_update"] > 0
    assert len(read_jsonl(out / "steps.jsonl")) == 3 * 29
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["eval_accuracy"] == metrics[-1]["eval_accuracy"]
    assert summary["total_seconds"] == pytest.approx(sum(m["seconds"] for m in metrics))
    state = checkpoint.load(out / "checkpoint.pt")
    assert {"model", "optimizer", "scheduler", "epoch", "step", "rng"} <= set(state)
    assert state["epoch"] == 3 and state["step"] == 87
    # eval metrics equal an independent evaluation of the final model
    model = trainer.model.eval()
    with torch.no_grad():
        out_ = model(test.tensors[0])
    # float32 means over the test set, in the trainer's evaluation batches and here in one
    assert metrics[-1]["eval_loss"] == pytest.approx(F.cross_entropy(out_, test.tensors[1]).item(),
                                                   rel=tol(torch.float32, len(test)))
    assert metrics[-1]["eval_accuracy"] == int((out_.argmax(1) == test.tensors[1]).sum()) / len(test)


def test_same_seed_same_metrics(digits, tmp_path):
    train, test = digits
    a = make(train, out=tmp_path / "a", eval_data=test, seed=3)
    b = make(train, out=tmp_path / "b", eval_data=test, seed=3)
    a.fit(), b.fit()
    assert without_times(read_jsonl(tmp_path / "a" / "metrics.jsonl")) == \
        without_times(read_jsonl(tmp_path / "b" / "metrics.jsonl"))
    assert read_jsonl(tmp_path / "a" / "steps.jsonl") == read_jsonl(tmp_path / "b" / "steps.jsonl")
    c = make(train, eval_data=test, seed=4)
    c.fit()
    assert without_times(c.history) != without_times(a.history)


def assert_same_run(a: Trainer, b: Trainer, dir_a, dir_b):
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa)
    assert a.scheduler.state_dict() == b.scheduler.state_dict()
    assert without_times(read_jsonl(dir_a / "metrics.jsonl")) == without_times(read_jsonl(dir_b / "metrics.jsonl"))
    assert read_jsonl(dir_a / "steps.jsonl") == read_jsonl(dir_b / "steps.jsonl")


def test_resume_at_an_epoch_boundary_is_bitwise_identical(digits, tmp_path):
    train, test = digits
    whole = make(train, epochs=4, out=tmp_path / "whole", eval_data=test)
    whole.fit()
    make(train, epochs=2, out=tmp_path / "split", eval_data=test).fit()
    torch.manual_seed(999)  # the resumed run must not depend on the caller's global RNG
    resumed = make(train, epochs=4, out=tmp_path / "split", eval_data=test, model=dropout_model(seed=1), resume=True)
    summary = resumed.fit()
    assert summary["epochs"] == 4 and len(resumed.history) == 4
    assert_same_run(whole, resumed, tmp_path / "whole", tmp_path / "split")


def test_ctrl_c_mid_epoch_checkpoints_and_resumes_bitwise(digits, tmp_path):
    train, test = digits
    whole = make(train, epochs=3, out=tmp_path / "whole", eval_data=test)
    whole.fit()
    interrupted = make(train, epochs=3, out=tmp_path / "cut", eval_data=test, callbacks=[InterruptAt(40)])
    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN when the suite runs as a background job)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    state = checkpoint.load(tmp_path / "cut" / "checkpoint.pt")
    assert (state["epoch"], state["step"], state["batch"]) == (1, 40, 40 - 29)
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored
    resumed = make(train, epochs=3, out=tmp_path / "cut", eval_data=test, model=dropout_model(seed=1))
    resumed.fit(resume=True)
    assert_same_run(whole, resumed, tmp_path / "whole", tmp_path / "cut")


def test_resume_drops_records_written_after_the_checkpoint(digits, tmp_path):
    train, _ = digits
    out = tmp_path / "run"
    make(train, epochs=2, out=out, checkpoint_every=1).fit()
    # simulate a crash after epoch 3's records were written but before its checkpoint
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "step": 87}) + "\n")
    with open(out / "steps.jsonl", "a") as f:
        f.write(json.dumps({"step": 59}) + "\n" + '{"step": 60, "tor')
    trainer = make(train, epochs=3, out=out, resume=True)
    trainer.fit()
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in read_jsonl(out / "steps.jsonl")] == list(range(1, 88))


def test_existing_run_is_not_overwritten(digits, tmp_path):
    train, _ = digits
    make(train, epochs=1, out=tmp_path / "run").fit()
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run.*resume"):
        make(train, epochs=1, out=tmp_path / "run").fit()
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_resume_without_checkpoint(digits, tmp_path):
    train, _ = digits
    with pytest.raises(ConfigError, match="no checkpoint.pt"):
        make(train, out=tmp_path / "empty", resume=True).fit()
    with pytest.raises(ConfigError, match="needs an output directory"):
        make(train, resume=True).fit()


class PoisonAtEpoch(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            with torch.no_grad():
                next(trainer.model.parameters())[0, 0] = float("nan")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(digits, tmp_path):
    train, _ = digits
    out = tmp_path / "run"
    trainer = make(train, epochs=5, out=out, callbacks=[PoisonAtEpoch(3)])
    with pytest.raises(DivergenceError, match=r"step 59 \(epoch 3\): loss became nan; try a lower learning rate"
                                              r" \(now .*\) or a warm-up schedule; the last good checkpoint is") as e:
        trainer.fit()
    assert e.value.step == 59 and math.isnan(e.value.loss)
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    assert read_jsonl(out / "steps.jsonl")[-1]["step"] == 58  # the run-up to the failure is kept for reading


def test_loss_growing_past_1000x_first_loss_stops(digits):
    train, _ = digits
    scale = {"value": 1.0}

    def loss_fn(out, y):
        return F.cross_entropy(out, y) * scale["value"]

    class Explode(Callback):
        def on_step_end(self, trainer, record):
            if record["step"] == 10:
                scale["value"] = 1e5

    model = dropout_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=1e-3), loss_fn, train, batch_size=50, epochs=2,
                      callbacks=[Explode()], progress=False)
    with pytest.raises(DivergenceError, match="step 11 .*exceeded 1000 × the first loss.*no checkpoint was written"):
        trainer.fit()


def test_callback_hooks_in_order(digits):
    train, _ = digits
    calls = []

    class Log(Callback):
        def on_fit_start(self, trainer):
            calls.append("fit_start")

        def on_epoch_start(self, trainer, epoch):
            calls.append(f"epoch_start {epoch}")

        def on_epoch_end(self, trainer, record):
            calls.append(f"epoch_end {record['epoch']}")

        def on_fit_end(self, trainer, summary):
            calls.append(f"fit_end {summary['epochs']}")

    make(train, epochs=2, callbacks=[Log()]).fit()
    assert calls == ["fit_start", "epoch_start 1", "epoch_end 1", "epoch_start 2", "epoch_end 2", "fit_end 2"]


def test_stop_training_ends_after_the_epoch(digits):
    train, _ = digits

    class Stop(Callback):
        def on_step_end(self, trainer, record):
            if record["step"] == 3:
                trainer.stop_training = True

    trainer = make(train, epochs=5, callbacks=[Stop()])
    assert trainer.fit()["epochs"] == 1 and trainer.step == 29


class Pairs(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_any_map_style_dataset_gives_the_same_run(digits):
    train, test = digits
    a = make(train, epochs=2, eval_data=test)
    b = make(Pairs(*train.tensors), epochs=2, eval_data=Pairs(*test.tensors))
    a.fit(), b.fit()
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert without_times(a.history) == without_times(b.history)


def test_evaluate_restores_mode_and_uses_running_stats(digits):
    train, test = digits
    model = tl.nn.mlp(64, [32], 10, batch_norm=True, seed=0)
    trainer = Trainer(model, torch.optim.Adam(model.parameters()), F.cross_entropy, train, 32, 2, progress=False,
                      device="cpu")
    trainer.fit()
    model.train()
    got = trainer.evaluate(test)
    assert model.training
    model.eval()
    with torch.no_grad():
        ref = F.cross_entropy(model(test.tensors[0]), test.tensors[1]).item()
    assert got["loss"] == pytest.approx(ref, rel=tol(torch.float32, len(test)))  # float32 means over the test set


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size=0"), ({"batch_size": "half"}, "batch_size='half'"),
    ({"batch_size": True}, "batch_size=True"), ({"epochs": 0}, "epochs=0"), ({"epochs": 2.5}, "epochs=2.5"),
    ({"device": "banana"}, "device 'banana' is not a device name"),
])
def test_bad_arguments(digits, kwargs, match):
    train, _ = digits
    with pytest.raises(ConfigError, match=match):
        make(train, **kwargs)


def test_cuda_refused_when_absent(digits):
    if torch.cuda.is_available():
        assert make(digits[0], device="cuda").device.type == "cuda"
    else:
        with pytest.raises(ConfigError, match="device 'cuda' is not available"):
            make(digits[0], device="cuda")


def test_batch_size_larger_than_data_means_full_batch(digits):
    assert make(digits[0], batch_size=10_000).steps_per_epoch == 1


def test_progress_bar_shows_epoch_loss_and_accuracy(digits, capsys):
    train, test = digits
    model = tl.nn.mlp(64, [8], 10, seed=0)
    Trainer(model, torch.optim.Adam(model.parameters()), F.cross_entropy, train, 32, 2, eval_data=test,
            progress=True).fit()
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "loss=" in err and "acc=" in err and "eval_acc=" in err
