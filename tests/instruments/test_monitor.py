"""The Monitor: schedule, fixed sample, no side effects, failures, arguments, Trainer runs and resume."""

import contextlib
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainlab.errors import ConfigError, DataError
from trainlab.instruments import Context, GradNorm, Instrument, Monitor, Reading, UpdateRatio, Units, preset
from trainlab.train import Callback, Trainer

from callbacks import Counter, InterruptAt
from digests import model_digest
from schedule import due
from tolerance import tol


def bn_dropout_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 10))


def mine():
    return [GradNorm(), UpdateRatio(), Units(every=10)]


class Recorder(Instrument):
    name = "recorder"

    def __init__(self, every=None):
        super().__init__(every)
        self.contexts = []

    def read(self, ctx):
        self.contexts.append(ctx)
        return {"value": float(ctx.step), "samples": len(ctx.batch[1])}


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_readings_leave_the_model_untouched(digits, mode):
    train, _ = digits
    model = bn_dropout_model()
    model.train()
    x, y = train.tensors
    F.cross_entropy(model(x[:32]), y[:32]).backward()  # grads present, as after an update
    loader = DataLoader(train, batch_size=100, shuffle=True)  # a shuffling loader draws from the global RNG
    monitor = Monitor(every=1, sample=300, instruments=[GradNorm(), UpdateRatio(), Units()], mode=mode)
    monitor.after_step(model, None, F.cross_entropy, loader)  # step 1: no previous yet for update_ratio
    before = model_digest(model)
    readings = monitor.after_step(model, None, F.cross_entropy, loader)
    assert {r.instrument for r in readings} == {"grad_norm", "update_ratio", "units"}
    assert all(math.isfinite(r.value) for r in readings)
    assert model_digest(model) == before


def test_schedule_and_context():
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.25)
    fast = Recorder()
    monitor = Monitor(every=3, sample=25, instruments=[fast, GradNorm(every=4)])
    steps, batches = {}, [(x[:16], y[:16]), (x[16:], y[16:])]
    for _ in range(12):
        for r in monitor.after_step(model, None, F.cross_entropy, batches, opt, batch_size=16):
            steps.setdefault(r.instrument, []).append(r.step)
    assert steps == {"recorder": due(3, 12), "grad_norm": due(4, 12)} == {"recorder": [1, 3, 6, 9, 12],
                                                                       "grad_norm": [1, 4, 8, 12]}  # a baseline at 1
    ctx = fast.contexts[-1]
    assert isinstance(ctx, Context) and ctx.step == 12 and ctx.lr == 0.25 and ctx.batch_size == 16
    assert ctx.mode == "eval" and ctx.seed == 0 and ctx.optimizer is opt
    assert torch.equal(ctx.batch[0], x[:25]) and torch.equal(ctx.batch[1], y[:25])  # the first 25, across batches
    assert fast.contexts[0].batch is ctx.batch  # drawn once per data source
    assert monitor.latest["recorder"].value == 12.0 and len(monitor.history) == len(due(3, 12)) + len(due(4, 12))
    assert monitor.after_step(model, None, F.cross_entropy, (x, y), step=30)[0].step == 30  # the caller's count


def test_a_failing_reading_is_recorded_once_warned_and_training_goes_on():
    class Broken(Instrument):
        name = "broken"

        def read(self, ctx):
            raise FloatingPointError("the loss is\nNaN")

    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    monitor = Monitor(every=1, instruments=[Broken(), GradNorm()])
    model = nn.Linear(3, 2)  # one model: a Monitor given another one starts afresh
    with pytest.warns(RuntimeWarning) as caught:
        for _ in range(3):
            readings = monitor.after_step(model, None, F.cross_entropy, (x, y))
    assert len([w for w in caught if "broken" in str(w.message)]) == 1
    broken = [r for r in monitor.history if r.instrument == "broken"]
    assert len(broken) == 3 and all(math.isnan(r.value) for r in broken)
    assert broken[0].extra == {"error": "FloatingPointError: the loss is NaN"}
    assert math.isfinite(readings[1].value)


@pytest.mark.parametrize("kwargs, match", [
    ({"every": 0}, "every=0"), ({"every": 2.5}, "every=2.5"), ({"every": True}, "every=True"),
    ({"sample": 0}, "sample=0"), ({"instruments": "fast"}, "'fast' is not a preset"),
    ({"instruments": []}, "non-empty list"), ({"instruments": [object()]}, "is not an instrument"),
    ({"instruments": [GradNorm(), GradNorm()]}, "repeat a name"), ({"mode": "test"}, "mode='test'"),
    ({"seed": "a"}, "seed='a'"), ({"batch_loss": 3}, "not callable"),
])
def test_bad_arguments_are_refused_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Monitor(**kwargs)


def test_bad_instrument_period_is_refused():
    with pytest.raises(ConfigError, match="every=0"):
        GradNorm(every=0)


def test_a_missing_loss_is_refused_at_once():
    with pytest.raises(ConfigError, match="loss_fn is None"):
        Monitor(every=1, instruments=[GradNorm()]).after_step(nn.Linear(3, 2), None, None, (torch.ones(2, 3),
                                                                                             torch.zeros(2).long()))


def test_empty_data_is_a_data_error():
    with pytest.raises(DataError):
        Monitor(every=1, instruments=[GradNorm()]).after_step(nn.Linear(3, 2), None, F.cross_entropy, [])


def test_batch_loss_batches_of_any_form():
    x, y = torch.randn(30, 3), torch.randint(0, 2, (30,))
    batches = [{"x": x[i:i + 10], "y": y[i:i + 10]} for i in range(0, 30, 10)]
    model = nn.Linear(3, 2)

    def batch_loss(m, b):
        return F.cross_entropy(m(b["x"]), b["y"])

    (r,) = Monitor(every=1, sample=25, instruments=[GradNorm()], batch_loss=batch_loss).after_step(
        model, None, None, batches)
    model.zero_grad()
    F.cross_entropy(model(x[:25]), y[:25]).backward()
    total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    assert r.value == pytest.approx(total, rel=tol(torch.float32, 25) + tol(torch.float32, 8))  # 25 samples, 8 weights


def test_state_dict_round_trip():
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    model = nn.Linear(3, 2)
    a = Monitor(every=2, instruments=[GradNorm(), UpdateRatio()])
    a.after_step(model, None, F.cross_entropy, (x, y))
    a.after_step(model, None, F.cross_entropy, (x, y))
    a.after_step(model, None, F.cross_entropy, (x, y))  # step 3: the parameters before update 4 are kept
    b = Monitor(every=2, instruments=[GradNorm(), UpdateRatio()])
    b.load_state_dict(a.state_dict())
    assert b.step == 3 and b.latest.keys() == a.latest.keys() and b.latest["grad_norm"] == a.latest["grad_norm"]
    assert [r.instrument for r in b.after_step(model, None, F.cross_entropy, (x, y))] == ["grad_norm", "update_ratio"]
    with pytest.raises(ValueError):
        b.load_state_dict({**a.state_dict(), "step": -1})
    assert Reading.from_dict({"step": 1, "instrument": "x", "value": None, "seconds": 0.5, "k": 2}).extra == {"k": 2}


# ---------------------------------------------------------------- Trainer runs
def make(train, epochs, out, monitor=None, callbacks=(), after=(), **kw):
    model = bn_dropout_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = monitor or Monitor(every=5, sample=200, instruments=mine(), progress=False)
    return Trainer(model, opt, F.cross_entropy, train, batch_size=100, epochs=epochs, out=out, progress=False,
                   device="cpu", callbacks=[*callbacks, monitor, *after], **kw)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def small(digits):
    train, _ = digits
    return TensorDataset(*(t[:500] for t in train.tensors))  # 5 updates per epoch


def test_trainer_writes_instruments_jsonl(small, tmp_path):
    trainer = make(small, 4, tmp_path / "run")
    trainer.fit()
    records = lines(tmp_path / "run" / "instruments.jsonl")
    by = {}
    for r in records:
        by.setdefault(r["instrument"], []).append(r["step"])
        assert {"step", "instrument", "value", "seconds"} <= r.keys() and math.isfinite(r["value"])
    assert by == {"grad_norm": due(5, 20), "update_ratio": due(5, 20), "units": due(10, 20)}
    assert records[0]["parts"].keys() == dict(trainer.module.named_parameters()).keys()
    with pytest.raises(ConfigError, match="instruments.jsonl"):  # a fresh run refuses to replace it
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "instruments.jsonl").write_text("")
        make(small, 1, tmp_path / "other").fit()


def test_kill_and_resume_reads_what_an_uninterrupted_run_reads(small, tmp_path):
    make(small, 4, tmp_path / "whole").fit()
    # update 9 is the one before a due reading: the kept parameters must survive in the checkpoint
    with pytest.raises(KeyboardInterrupt):
        make(small, 4, tmp_path / "cut", callbacks=[InterruptAt(9)]).fit()
    with open(tmp_path / "cut" / "instruments.jsonl", "a") as f:  # readings past the checkpoint, a torn line
        f.write(json.dumps({"step": 10, "instrument": "grad_norm", "value": 1.0, "seconds": 0.0}) + '\n{"step": 1')
    torch.manual_seed(123)
    make(small, 4, tmp_path / "cut", callbacks=[Callback()], resume=True).fit()
    whole, cut = lines(tmp_path / "whole" / "instruments.jsonl"), lines(tmp_path / "cut" / "instruments.jsonl")
    assert without_seconds(cut) == without_seconds(whole)


def test_a_resume_may_add_a_callback_before_the_monitor(small, tmp_path):
    """Saved states go back to callbacks of their own class, not by position (--doctor added on --resume)."""
    make(small, 4, tmp_path / "whole").fit()
    with pytest.raises(KeyboardInterrupt):
        make(small, 4, tmp_path / "cut", after=[InterruptAt(12)]).fit()  # saved: [Monitor, InterruptAt]
    counter = Counter()  # resumed: [Counter, Monitor]
    make(small, 4, tmp_path / "cut", callbacks=[counter], resume=True).fit()
    assert counter.steps == 20 - 12
    whole, cut = lines(tmp_path / "whole" / "instruments.jsonl"), lines(tmp_path / "cut" / "instruments.jsonl")
    assert without_seconds(cut) == without_seconds(whole)


def test_resume_refuses_a_damaged_middle_line(small, tmp_path):
    make(small, 2, tmp_path / "run").fit()
    path = tmp_path / "run" / "instruments.jsonl"
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0], "garbage", *text[1:]]) + "\n")
    with pytest.raises(DataError, match="line 2 is damaged"):
        make(small, 3, tmp_path / "run", resume=True).fit()


def test_progress_bar_shows_short_readings(small, capsys):
    model = bn_dropout_model()
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), F.cross_entropy, small, batch_size=100,
            epochs=1, device="cpu", callbacks=[Monitor(every=5, instruments=[GradNorm()])], progress=True).fit()
    assert "‖g‖=" in capsys.readouterr().err


def test_presets_scale_with_every():
    economy = {inst.name: inst.every for inst in Monitor(instruments="economy").instruments}
    assert economy == {"grad_norm": 500, "update_ratio": 100, "units": 1000, "sharpness": 4000, "stability": 4000,
                       "noise_scale": 4000}
    full = {inst.name: inst.every for inst in Monitor(every=5, instruments="full").instruments}
    assert full == {"grad_norm": 25, "update_ratio": 5, "units": 50, "sharpness": 150, "stability": 150,
                    "noise_scale": 250, "gsnr": 250, "trace": 1000}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    from trainlab.cli import main

    out = tmp_path_factory.mktemp("cli") / "run"
    args = ["train", "--set", "data.name=iris", "--set", "train.epochs=34", "--set", "model.hidden=[4]",
            "--set", "train.batch_size=8", "--set", "train.device=cpu", "--no-progress", "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*args, "--monitor", "full"]) == 0
    assert f"instrument readings (full): {out / 'instruments.jsonl'}\n  draw them: trainlab report {out}\n" \
        in printed.getvalue()
    return out


def test_cli_monitor_writes_readings(cli_run):
    records = lines(cli_run / "instruments.jsonl")  # iris: 15 updates per epoch, 510 in all
    expected = {inst.name: due(inst.every, 510) for inst in preset("full")}  # the trace only at its baseline, 1
    assert {name: [r["step"] for r in records if r["instrument"] == name] for name in expected} == expected
    last = {r["instrument"]: r for r in records}
    assert {name: r["step"] for name, r in last.items()} == {"grad_norm": 500, "update_ratio": 510, "units": 500,
                                                             "sharpness": 300, "stability": 300, "noise_scale": 500,
                                                             "gsnr": 500, "trace": 1}
    assert all("error" not in r and r["value"] == r["value"] for r in last.values())  # none failed, none NaN


@pytest.mark.parametrize("periods", [(6, 4), (5, 3), (7, 7), (1, 9)])
def test_schedule_with_kept_parameters_across_periods(periods):
    """Readings fall at update 1 (a baseline) and exactly on the multiples of each period, and
    update_ratio always compares with the parameters just before the last update, whatever the
    periods' common divisor."""
    ratio_every, norm_every = periods
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    model = nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    monitor = Monitor(instruments=[UpdateRatio(every=ratio_every), GradNorm(every=norm_every)], sample=32)
    seen = {"update_ratio": [], "grad_norm": []}
    for step in range(1, 31):
        before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
        loss = F.cross_entropy(model(x[step % 4 * 16:][:16]), y[step % 4 * 16:][:16])
        opt.zero_grad()
        loss.backward()
        opt.step()
        after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        for r in monitor.after_step(model, loss.item(), F.cross_entropy, (x, y), opt):
            seen[r.instrument].append(r.step)
            if r.instrument == "update_ratio":
                expected = float((after - before).norm() / after.norm())
                assert r.value == pytest.approx(expected, rel=tol(torch.float32, after.numel()))  # float32 norms
    # (at update 1 no earlier parameters were seen: the Monitor starts watching after it)
    assert seen == {"update_ratio": [s for s in due(ratio_every, 30) if s > 1], "grad_norm": due(norm_every, 30)}


def test_the_documented_schedule_is_the_presets():
    """docs/instruments.md's table and help(Monitor)'s give each preset's periods (every=10) as
    PRESETS builds them, and a 600-update run under Monitor() reads its curvature at update 1."""
    from pathlib import Path

    columns = ["update_ratio", "grad_norm", "units", "sharpness", "noise_scale", "gsnr", "trace"]
    built = {name: {inst.name: inst.every for inst in preset(name)} for name in ("economy", "full")}
    for name, periods in built.items():
        assert periods.get("stability") == periods["sharpness"]  # one column for both
        expected = [f"{periods[c]:,}" if c in periods else "–" for c in columns]
        row = next(line for line in (Path(__file__).parents[2] / "docs" / "instruments.md").read_text().splitlines()
                   if line.startswith(f"| `{name}` |"))
        assert [cell.strip() for cell in row.strip("|").split("|")[1:]] == expected
        line = next(line for line in Monitor.__doc__.splitlines() if line.split()[:1] == [name])
        assert line.split()[1:] == expected


def test_monitor_reads_its_curvature_on_a_600_update_run():
    """issue 22: Monitor() (economy) first read sharpness and stability at update 4,000, so a
    600-update run got none; now every instrument reads at update 1 and then on its period."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(sample=32, progress=False)
    seen = {}
    for _ in range(600):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for r in monitor.after_step(model, loss.item(), F.cross_entropy, (x, y), opt, batch_size=64):
            assert "error" not in r.extra, r.extra
            seen.setdefault(r.instrument, []).append(r.step)
    # update_ratio needs the parameters before the update: a plain loop without start() has none at update 1
    assert seen == {inst.name: [s for s in due(monitor.period(inst), 600) if s > 1 or inst.name != "update_ratio"]
                    for inst in monitor.instruments}
    assert seen["sharpness"] == seen["stability"] == [1]


# ---------------------------------------------------------------- instruments by name (issue 23, item 3)
def test_instruments_by_name_are_read_every_every_updates():
    from trainlab.instruments.monitor import instrument_classes

    classes = instrument_classes()
    assert set(classes) == {"grad_norm", "update_ratio", "units", "sharpness", "stability", "noise_scale", "gsnr",
                            "trace", "alpha"}
    monitor = Monitor(instruments=["sharpness", "noise_scale", GradNorm(every=7)], every=5, progress=False)
    assert [type(i) for i in monitor.instruments] == [classes["sharpness"], classes["noise_scale"], GradNorm]
    assert [monitor.period(i) for i in monitor.instruments] == [5, 5, 7]


@pytest.mark.parametrize("instruments, match", [
    (["sharpnes"], "'sharpnes' is not an instrument; the instruments are alpha, grad_norm"),
    (["sharpness", "sharpness"], "repeat a name"),
    (["units", Units()], "repeat a name"),
    ([""], "'' is not an instrument"),
])
def test_bad_instrument_names_are_refused(instruments, match):
    with pytest.raises(ConfigError, match=match):
        Monitor(instruments=instruments, progress=False)


@pytest.mark.parametrize("periods", [(1,), (3, 3), (4, 10), (6, 9, 15), (100, 500, 1000)])
def test_looks_at_tells_every_update_the_monitor_reads_or_keeps_the_parameters_of(periods):
    """``looks_at(count)`` False ⇒ the update is only counted: nothing read, no parameters kept
    (what trainlab.watch relies on to count a loss-less update after the next step)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    instruments = [UpdateRatio(every=periods[0]), GradNorm(every=periods[-1]), *([Units(every=periods[1])]
                                                                                  if len(periods) > 2 else [])]
    monitor = Monitor(every=7, instruments=instruments, progress=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = (torch.ones(4, 3), torch.tensor([0, 1, 0, 1]))
    monitor.start(model, 0)
    quiet = 0
    for count in range(1, 2 * max(periods) + 3):
        looks = monitor.looks_at(count)
        assert monitor.looks_at(count + 1)  # not the next count: said True, to be safe
        kept_before = monitor._previous is not None
        opt.step()
        read = monitor.after_step(model, 1.0, F.cross_entropy, data, opt)
        if not looks:
            quiet += 1
            assert not read and not kept_before and monitor._previous is None, count
    assert quiet >= (0 if periods == (1,) else max(periods) // 2)  # most updates are only counted
