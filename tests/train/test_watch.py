"""``trainlab.watch`` on plain loops: the same readings as the Trainer on the same updates, a run
directory ``trainlab report`` draws, values attributed to the right update, and bad input refused
before anything is written."""

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import trainlab as tl
from trainlab.cli import main
from trainlab.errors import ConfigError
from trainlab.instruments import Monitor

from digests import tree_digest

N, B, SEED = 96, 16, 0
#: float64 readings of two runs on bitwise-equal parameters differ only by summation order in the
#: accumulated-gradient case; the issue's bound.
REL = 1e-10


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (N,), generator=gen)
    return TensorDataset(x, y)


def net():
    return tl.nn.mlp(8, [12], 4, activation="tanh", seed=SEED).double()


def batches(n, batch, epochs, seed=SEED):
    """The Trainer's batch order: a permutation per epoch from ``Generator().manual_seed(seed)``."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        yield from (order[i:i + batch] for i in range(0, n, batch))


def monitor():
    return Monitor(every=1, instruments="full", progress=False)  # update_ratio every update, all at update 1


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_same_readings(watched, trained):
    a, b = records(watched / "instruments.jsonl"), records(trained / "instruments.jsonl")
    assert [(r["step"], r["instrument"]) for r in a] == [(r["step"], r["instrument"]) for r in b]
    assert len({r["instrument"] for r in a}) == 8 and len(a) > max(r["step"] for r in a)
    for x, y in zip(a, b):
        if y["value"] is None:
            assert x["value"] is None, (x, y)
        else:
            assert x["value"] == pytest.approx(y["value"], rel=REL, abs=1e-300), (x["step"], x["instrument"])


def train_with_trainer(data, out, optimizer, epochs, batch, scheduler=None):
    model = net()
    opt = optimizer(model)
    trainer = tl.train.Trainer(model, opt, F.cross_entropy, data, batch, epochs, seed=SEED, device="cpu",
                               scheduler=scheduler(opt) if scheduler else None, callbacks=[monitor()], out=out,
                               progress=False)
    trainer.fit()
    return model


def test_sgd_loop_logging_before_the_step_reads_as_the_trainer(data, tmp_path):
    trained = tmp_path / "trainer"
    reference = train_with_trainer(data, trained, lambda m: torch.optim.SGD(m.parameters(), lr=0.3), 3, B)
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    x, y = data.tensors
    with tl.watch(model, opt, F.cross_entropy, data, out=tmp_path / "watched", monitor=monitor(), batch_size=B) as w:
        for idx in batches(N, B, 3):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            w.log(loss=loss)  # before the step: the coming update's loss
            opt.step()
    assert w.step == 3 * N // B
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))
    assert_same_readings(tmp_path / "watched", trained)
    mine, theirs = records(tmp_path / "watched" / "steps.jsonl"), records(trained / "steps.jsonl")
    assert [(r["step"], r["loss"], r["lr"]) for r in mine] == [(r["step"], r["loss"], r["lr"]) for r in theirs]


def test_adam_with_a_scheduler_logging_after_the_step_reads_as_the_trainer(data, tmp_path):
    adam = lambda m: torch.optim.Adam(m.parameters(), lr=0.02)  # noqa: E731
    schedule = lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5)  # noqa: E731
    trained = tmp_path / "trainer"
    train_with_trainer(data, trained, adam, 2, B, schedule)
    model = net()
    opt = adam(model)
    sched = schedule(opt)
    x, y = data.tensors
    with tl.watch(model, opt, F.cross_entropy, data, out=tmp_path / "watched", monitor=monitor(), batch_size=B,
                  scheduler=sched) as w:
        for idx in batches(N, B, 2):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            w.log(loss=loss.item(), seen=float(len(idx)))  # after the step: the update just made
    assert_same_readings(tmp_path / "watched", trained)
    mine, theirs = records(tmp_path / "watched" / "steps.jsonl"), records(trained / "steps.jsonl")
    assert [(r["step"], r["loss"], r["lr"]) for r in mine] == [(r["step"], r["loss"], r["lr"]) for r in theirs]
    assert len({r["lr"] for r in mine}) > 1 and all(r["seen"] == B for r in mine)
    config = (tmp_path / "watched" / "config.toml").read_text()
    assert 'name = "adam"' in config and 'name = "StepLR"' in config and "batch_size = 16" in config


def test_gradient_accumulation_counts_optimizer_steps(data, tmp_path):
    """Two micro-batches of 16 per update read as the Trainer's batches of 32."""
    trained = tmp_path / "trainer"
    train_with_trainer(data, trained, lambda m: torch.optim.SGD(m.parameters(), lr=0.3, momentum=0.5), 2, 2 * B)
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    x, y = data.tensors
    with tl.watch(model, opt, F.cross_entropy, data, out=tmp_path / "watched", monitor=monitor(),
                  batch_size=2 * B) as w:
        for idx in batches(N, 2 * B, 2):
            opt.zero_grad(set_to_none=True)
            for part in idx.chunk(2):
                loss = F.cross_entropy(model(x[part]), y[part])
                (loss / 2).backward()
                w.log(loss=loss)  # each micro-batch's, averaged into the update's
            opt.step()
    assert w.step == 2 * N // (2 * B)
    assert_same_readings(tmp_path / "watched", trained)
    mine, theirs = records(tmp_path / "watched" / "steps.jsonl"), records(trained / "steps.jsonl")
    assert [r["step"] for r in mine] == [r["step"] for r in theirs]
    assert [r["loss"] for r in mine] == pytest.approx([r["loss"] for r in theirs], rel=1e-12)


def test_the_report_draws_a_watched_run(data, tmp_path, capsys):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    loader = DataLoader(data, batch_size=B, shuffle=True, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "run"
    with tl.watch(model, opt, F.cross_entropy, loader, out=out, monitor=Monitor(every=2, progress=False)) as w:
        for epoch in range(2):
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                w.log(loss=loss, epoch=epoch, accuracy=(model(x).argmax(1) == y).double().mean())
    assert w.batch_size == B  # the DataLoader's
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "instruments.jsonl", "steps.jsonl",
                                                    "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2 * N // B == w.step
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "watched with trainlab.watch" in page and "accuracy" in page and "as logged with the loop" in page
    assert "Update ratio" in page and "Sharpness" in page and "2 epochs" not in page


@pytest.mark.parametrize("where", ["before", "after"])
def test_each_value_goes_to_its_update(where, tmp_path):
    """The loss logged for update k is k in both habits; a value logged before the first step goes
    to step 0 (after) or update 1 (before)."""
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with tl.watch(model, opt, out=tmp_path, monitor=None) as w:
        w.log(warmup=1.0)
        for k in range(1, 6):
            model(torch.ones(1, 2)).sum().backward()
            if where == "before":
                w.log(loss=float(k))
            opt.step()
            if where == "after":
                w.log(loss=float(k), twice=float(k))
                w.log(twice=2.0 * k)  # the last of a value logged twice
    steps = records(tmp_path / "steps.jsonl")
    losses = {r["step"]: r["loss"] for r in steps if "loss" in r}
    assert losses == {k: float(k) for k in range(1, 6)}
    first = next(r for r in steps if "warmup" in r)
    assert first["step"] == (0 if where == "after" else 1)
    if where == "after":
        assert [r["twice"] for r in steps if "twice" in r] == [2.0 * k for k in range(1, 6)]


def test_the_doctor_treats_a_watched_loop_as_it_treats_the_trainer(tmp_path):
    """A crawl (SGD, η = 1e-5) on digits: the watch's doctor names it and raises η at the update
    the Trainer's doctor does."""
    train, _ = tl.data.load_digits(test_fraction=0.2, seed=0)
    x, y = train.tensors

    def parts():
        model = tl.nn.mlp(64, [32], 10, seed=0)
        return model, torch.optim.SGD(model.parameters(), lr=1e-5)

    model, opt = parts()
    trainer = tl.train.Trainer(model, opt, F.cross_entropy, train, 32, 3, seed=0, device="cpu", progress=False,
                               callbacks=[Monitor(progress=False), tl.train.StallDoctor(max_seconds=60.0)])
    trainer.fit()
    expected = [(e["step"], e["cause"]) for e in trainer.events if e.get("cause")]
    model, opt = parts()
    out = tmp_path / "run"
    with tl.watch(model, opt, F.cross_entropy, train, out=out, doctor=tl.train.StallDoctor(max_seconds=60.0),
                  batch_size=32) as w:
        for idx in batches(len(y), 32, 3):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            w.log(loss=loss)
    assert expected and expected[0][1] == "step_too_small"
    assert [(e["step"], e["cause"]) for e in w.events if e.get("cause")] == expected
    assert opt.param_groups[0]["lr"] > 1e-5
    logged = [r for r in records(out / "metrics.jsonl") if r.get("cause")]
    assert [(r["step"], r["cause"]) for r in logged] == expected
    assert main(["report", str(out)]) == 0 and "raise η" in (out / "report.html").read_text()


def test_an_update_without_a_loss_is_skipped_by_the_doctor_with_one_warning(data):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data.tensors
    w = tl.watch(model, opt, F.cross_entropy, data, monitor=None, doctor=True)
    with pytest.warns(RuntimeWarning, match="without a loss, so the stall doctor skips it") as caught:
        for _ in range(3):
            F.cross_entropy(model(x), y).backward()
            opt.step()
        w.close()
    assert len([c for c in caught if "without a loss" in str(c.message)]) == 1 and w.step == 3


def test_a_loop_that_logs_no_loss_is_read_on_each_update_s_own_parameters(data, tmp_path):
    """No loss logged: an update the Monitor reads (or keeps the parameters of) is read just before
    the next step — the pre-hook is there for that one step only — and one it only counts is counted
    after it; the readings equal a Monitor's called after each step."""
    x, y = data.tensors

    def run(watched):
        model = net()
        mon = Monitor(every=3, instruments=["grad_norm", "update_ratio"], progress=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        w = tl.watch(model, opt, F.cross_entropy, data, out=tmp_path, monitor=mon) if watched else None
        if not watched:
            mon.start(model, 0)  # as the watch does: update_ratio reads update 1 too
        hooked = []
        for k in range(9):
            opt.zero_grad()
            F.cross_entropy(model(x[16 * k:16 * k + 16]), y[16 * k:16 * k + 16]).backward()
            hooked.append(len(opt._optimizer_step_pre_hooks))
            opt.step()
            if not watched:
                mon.after_step(model, None, F.cross_entropy, data, opt)
        if watched:
            w.close()
            assert len(opt._optimizer_step_pre_hooks) == len(opt._optimizer_step_post_hooks) == 0
        return [(r.step, r.instrument, r.value) for r in mon.history], hooked

    (watched, hooked), (reference, _) = run(True), run(False)
    # before step k + 1: hooked after update k unless the Monitor only counts it — k = 4, 7 with
    # periods 3 (k = 1 baseline; 3, 6, 9 due; 2, 5, 8 keep the parameters for update_ratio)
    assert hooked == [0, 1, 1, 1, 0, 1, 1, 0, 1]
    assert [r[:2] for r in watched] == [r[:2] for r in reference] and len(watched) == 8
    assert [r[2] for r in watched] == pytest.approx([r[2] for r in reference], rel=REL, abs=1e-300)
    assert [r["step"] for r in records(tmp_path / "steps.jsonl")] == list(range(1, 10))


def test_a_failing_loss_becomes_an_event_and_the_loop_goes_on(data, tmp_path):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data.tensors

    def broken(outputs, targets):
        raise RuntimeError("the user's loss is broken")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the Monitor warns once per failing instrument
        with tl.watch(model, opt, broken, data, out=tmp_path, doctor=True) as w:
            for _ in range(3):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                w.log(loss=loss)
    assert w.step == 3
    readings = records(tmp_path / "instruments.jsonl")
    assert readings and all(r["value"] is None and "broken" in r["error"] for r in readings if r["step"] == 1
                            and r["instrument"] != "update_ratio")
    errors = [e for e in w.events if e["event"] == "callback_error"]
    assert errors and "the stall doctor failed" in errors[0]["message"]
    assert [r["event"] for r in records(tmp_path / "metrics.jsonl")] == [e["event"] for e in w.events]


def test_close_removes_the_hooks_and_an_exception_is_recorded(data, tmp_path):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data.tensors
    with pytest.raises(KeyError):
        with tl.watch(model, opt, out=tmp_path, monitor=None) as w:
            F.cross_entropy(model(x), y).backward()
            opt.step()
            w.log(loss=1.0)
            raise KeyError("the user's bug")
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    opt.step()  # after close: not counted
    assert w.step == 1 and w.close() is None
    with pytest.raises(ConfigError, match="this watch is closed"):
        w.log(loss=1.0)
    assert not (tmp_path / ".trainlab.lock").exists()


def test_monitor_none_reads_nothing_and_needs_no_loss_fn(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = tl.watch(model, opt, out=tmp_path, monitor=None)
    for _ in range(250):
        opt.step()
    w.close()
    assert [r["step"] for r in records(tmp_path / "steps.jsonl")] == list(range(1, 251))
    assert not (tmp_path / "instruments.jsonl").exists()


def _bad(case, model, opt, data, out):
    kwargs = {"out": out}
    if case == "not a module":
        return tl.watch("model", opt, F.cross_entropy, data, **kwargs)
    if case == "not an optimizer":
        return tl.watch(model, object(), F.cross_entropy, data, **kwargs)
    if case == "another model's optimizer":
        return tl.watch(model, torch.optim.SGD(net().parameters(), lr=0.1), F.cross_entropy, data, **kwargs)
    if case == "monitor of another kind":
        return tl.watch(model, opt, F.cross_entropy, data, monitor=3, **kwargs)
    if case == "unknown preset":
        return tl.watch(model, opt, F.cross_entropy, data, monitor="cheap", **kwargs)
    if case == "doctor of another kind":
        return tl.watch(model, opt, F.cross_entropy, data, doctor="yes", **kwargs)
    if case == "no loss":
        return tl.watch(model, opt, None, data, **kwargs)
    if case == "no data":
        return tl.watch(model, opt, F.cross_entropy, None, **kwargs)
    if case == "loss not callable":
        return tl.watch(model, opt, "cross_entropy", data, **kwargs)
    if case == "batch size zero":
        return tl.watch(model, opt, F.cross_entropy, data, batch_size=0, **kwargs)
    if case == "scheduler without step":
        return tl.watch(model, opt, F.cross_entropy, data, scheduler=0.5, **kwargs)
    raise AssertionError(case)


BAD = [
    ("not a module", "model is a str, not a torch.nn.Module"),
    ("not an optimizer", "optimizer is a object, not a torch.optim.Optimizer"),
    ("another model's optimizer", "the optimizer holds none of the model's parameters"),
    ("monitor of another kind", "monitor=3 is not allowed"),
    ("unknown preset", "instruments='cheap' is not a preset"),
    ("doctor of another kind", "doctor='yes' is not allowed"),
    ("no loss", "pass loss_fn="),
    ("no data", "pass data="),
    ("loss not callable", "loss_fn='cross_entropy' is not callable"),
    ("batch size zero", "batch_size=0 is not allowed"),
    ("scheduler without step", "scheduler=0.5 is not a learning-rate scheduler"),
]


@pytest.mark.parametrize("case, message", BAD, ids=[c for c, _ in BAD])
def test_bad_arguments_are_refused_before_anything_is_written(case, message, data, tmp_path):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (tmp_path / "notes.txt").write_text("the user's")
    before = tree_digest(tmp_path)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        _bad(case, model, opt, data, tmp_path)
    assert "\n" not in str(caught.value)
    assert tree_digest(tmp_path) == before
    assert not opt._optimizer_step_post_hooks  # no hook left behind


@pytest.mark.parametrize("call, message", [
    (lambda w: w.log(loss="low"), "loss='low' is not allowed; expected a real number"),
    (lambda w: w.log(loss=torch.ones(3)), "is not allowed; expected a real number or a one-element tensor"),
    (lambda w: w.log(step=3), "'step' is recorded by the watch itself"),
    (lambda w: w.log(lr=0.1), "'lr' is recorded by the watch itself"),
    (lambda w: w.log(acc=[1, 2]), "acc=[1, 2] is not allowed"),
])
def test_bad_values_are_refused_in_one_sentence(call, message, tmp_path):
    model = torch.nn.Linear(2, 2)
    w = tl.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), out=tmp_path, monitor=None)
    try:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            call(w)
    finally:
        w.close()
    assert not (tmp_path / "steps.jsonl").exists()


def test_an_earlier_run_is_kept_unless_overwritten_and_a_busy_directory_refused(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = tl.watch(model, opt, out=tmp_path, monitor=None)
    with pytest.raises(ConfigError, match="is in use by another trainlab run"):
        tl.watch(model, opt, out=tmp_path, monitor=None, overwrite=True)
    opt.step()
    first.close()
    before = tree_digest(tmp_path)
    with pytest.raises(ConfigError, match="already holds config.toml, steps.jsonl, summary.json"):
        tl.watch(model, opt, out=tmp_path, monitor=None)
    assert tree_digest(tmp_path) == before
    second = tl.watch(model, opt, out=tmp_path, monitor=None, overwrite=True)
    second.close()
    assert not (tmp_path / "steps.jsonl").exists() and json.loads((tmp_path / "summary.json").read_text())["steps"] == 0


def test_a_non_finite_loss_is_written_as_null(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tl.watch(model, opt, out=tmp_path, monitor=None) as w:
        opt.step()
        w.log(loss=math.nan, grad=torch.tensor(float("inf")))
    (record,) = records(tmp_path / "steps.jsonl")
    assert record["loss"] is None and record["grad"] is None


def test_a_slow_loop_s_records_are_written_every_few_seconds(tmp_path, monkeypatch):
    watch_module = __import__("sys").modules["trainlab.train.watch"]
    monkeypatch.setattr(watch_module, "FLUSH_SECONDS", 0.0)  # every check finds the time passed
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = tl.watch(model, opt, out=tmp_path, monitor=None)
    for _ in range(101):
        opt.step()
        w.log(loss=1.0)
    assert len(records(tmp_path / "steps.jsonl")) == 100  # updates 1–100, written before close
    w.close()
    assert len(records(tmp_path / "steps.jsonl")) == 101


def test_readings_are_written_with_the_step_records(tmp_path, monkeypatch):
    """Readings are queued and written with the step records (one open of the file for several),
    never later than them: at a flush every reading of the updates written is in the file."""
    watch_module = __import__("sys").modules["trainlab.train.watch"]
    monkeypatch.setattr(watch_module, "FLUSH_SECONDS", 0.0)
    x, y = torch.randn(40, 2, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 2
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(instruments=["grad_norm"], every=50)
    w = tl.watch(model, opt, F.cross_entropy, (x, y), out=tmp_path, monitor=monitor)
    for _ in range(99):
        opt.step()
        w.log(loss=1.0)
    assert not (tmp_path / "instruments.jsonl").exists()  # update 1's reading waits for the records' flush
    for _ in range(2):
        opt.step()
        w.log(loss=1.0)
    assert [r["step"] for r in records(tmp_path / "instruments.jsonl")] == [1, 50, 100]
    assert len(records(tmp_path / "steps.jsonl")) == 100
    w.close()
    assert [r["step"] for r in records(tmp_path / "instruments.jsonl")] == [1, 50, 100]
    assert len(records(tmp_path / "steps.jsonl")) == 101


def test_a_step_a_grad_scaler_skips_is_no_update(tmp_path):
    """AMP's GradScaler skips optimizer.step() on inf gradients: the watch counts optimizer steps taken."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    x, y = torch.ones(4, 3), torch.tensor([0, 1, 0, 1])
    with tl.watch(model, opt, out=tmp_path, monitor=None) as w:
        for poisoned in (False, True, False):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            if poisoned:
                model.weight.grad[0, 0] = math.inf
            scaler.step(opt)
            scaler.update()
            w.log(loss=loss)
    assert w.step == 2
    assert [r["step"] for r in records(tmp_path / "steps.jsonl")] == [1, 2]


@pytest.mark.parametrize("ending, status", [("", "completed"), ("raise SystemExit('stopped')", "completed"),
                                            ("raise RuntimeError('the user bug')", "failed")])
def test_a_watch_left_open_is_closed_at_exit(ending, status, tmp_path):
    """A script that never closes its watch still gets its records and summary; an uncaught
    exception marks the run failed."""
    import os
    import subprocess
    import sys

    script = (f"import torch, trainlab as tl\n"
              f"model = torch.nn.Linear(2, 2)\n"
              f"opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
              f"w = tl.watch(model, opt, out={str(tmp_path)!r}, monitor=None)\n"
              f"for _ in range(3):\n    opt.step()\n    w.log(loss=1.0)\n"
              f"{ending}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == status
    assert [r["step"] for r in records(tmp_path / "steps.jsonl")] == [1, 2, 3]
    assert not (tmp_path / ".trainlab.lock").exists()


def test_a_spike_is_read_at_once_as_the_trainer_reads_it(data, tmp_path):
    """Periods above 1 and a jump of the loss: the readings — the one at the spike included — equal
    the Trainer's, and the Monitor's count and recent losses end the same."""
    from trainlab.instruments import GradNorm, Sharpness, UpdateRatio

    def monitor_():
        return Monitor(every=4, progress=False, instruments=[UpdateRatio(every=12), GradNorm(every=24),
                                                             Sharpness(every=48)])

    def schedule(o):  # update 21 takes a step 40 times larger: the loss after it jumps
        return torch.optim.lr_scheduler.LambdaLR(o, lambda s: 40.0 if s == 20 else 1.0)

    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    trained = monitor_()
    tl.train.Trainer(model, opt, F.cross_entropy, data, B, 12, seed=SEED, device="cpu", scheduler=schedule(opt),
                     callbacks=[trained], out=tmp_path / "trainer", progress=False).fit()
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    sched = schedule(opt)
    watched = monitor_()
    x, y = data.tensors
    with tl.watch(model, opt, F.cross_entropy, data, out=tmp_path / "watched", monitor=watched, batch_size=B) as w:
        for idx in batches(N, B, 12):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            w.log(loss=loss.item())
    mine, theirs = records(tmp_path / "watched" / "instruments.jsonl"), records(tmp_path / "trainer" / "instruments.jsonl")
    assert [(r["step"], r["instrument"]) for r in mine] == [(r["step"], r["instrument"]) for r in theirs]
    spikes = [r["step"] for r in mine if r["instrument"] == "sharpness" and r["step"] not in (1, 48)]
    assert spikes, "the jump was read at once"
    for a, b in zip(mine, theirs):
        assert a["value"] == pytest.approx(b["value"], rel=REL), (a["step"], a["instrument"])
    assert watched.step == trained.step == w.step and list(watched._recent) == list(trained._recent)
