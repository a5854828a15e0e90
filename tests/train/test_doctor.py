"""The stall doctor on runs that stall (and one that does not), each with and without it."""

import json

import pytest
import torch
import torch.nn.functional as F

import trainlab as tl
from trainlab.errors import ConfigError
from trainlab.experiments import stalls
from trainlab.train.doctor import StallDoctor, bounded_sample


@pytest.mark.parametrize("name, verdict", [("zero_linear", "saddle"), ("tiny_init", "saddle"),
                                           ("identical_units", "saddle")])
def test_stalled_runs_get_moving(name, verdict):
    plain, treated = stalls.run(name, doctor=False), stalls.run(name, doctor=True)
    assert plain.start == treated.start  # same seed, same first epoch (the doctor waits a window)
    assert plain.largest_drift <= 0.02 and not plain.events  # stuck for the whole budget
    assert treated.losses[-1] <= 0.5 * treated.start
    assert treated.events and treated.events[0]["verdict"] == verdict
    assert all(e["verdict"] in tl.curvature.critical.VERDICTS and e["message"] for e in treated.events)
    assert treated.events[0]["action"] == "escape" and treated.events[0]["applied"]
    assert treated.events[0]["loss_after"] < treated.events[0]["loss"]


def test_degenerate_point_is_named_and_perturbed():
    plain, treated = stalls.run("two_zero_layers", doctor=False), stalls.run("two_zero_layers", doctor=True)
    assert plain.largest_drift <= 0.02
    first = treated.events[0]
    assert first["verdict"] == "degenerate" and first["grad_norm"] == 0 and first["lambda_max"] == 0
    assert first["action"] == "perturb" and first["applied"] and "random perturbation" in first["message"]
    assert "escape" not in first["action"]  # it does not claim an escape it cannot make
    assert treated.losses[-1] <= 0.5 * treated.start


def test_healthy_run_raises_no_false_alarm():
    assert stalls.run("healthy", doctor=True).events == []


def test_act_false_only_reports(digits):
    train, _ = digits
    model = stalls.SCENARIOS["zero_linear"].build(0)
    doctor = StallDoctor(window=100, act=False)
    trainer = tl.train.Trainer(model, tl.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, train, 32, 5,
                               callbacks=[doctor], progress=False)
    trainer.fit()
    assert doctor.events and all(not e["applied"] for e in doctor.events)
    assert "not applied" in doctor.events[0]["action"]
    assert torch.equal(model[1].weight, torch.zeros_like(model[1].weight))  # nothing was changed
    assert len(doctor.events) <= 2  # after a finding it cannot act on, it waits four windows


def test_events_reach_metrics_summary_and_survive_resume(digits, tmp_path):
    train, _ = digits

    def make(epochs, resume=False):
        model = stalls.SCENARIOS["zero_linear"].build(0)
        return tl.train.Trainer(model, tl.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, train, 32, epochs,
                                callbacks=[StallDoctor(window=100)], out=tmp_path / "run", resume=resume, progress=False)

    summary = make(6).fit()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = [line for line in lines if "event" in line]
    assert events and events == summary["events"]
    assert events[0]["step"] == 200 and events[0]["epoch"] == 5  # suspected at 100, confirmed a window later
    resumed = make(8, resume=True)
    summary = resumed.fit()
    assert summary["events"][:len(events)] == events and len(resumed.history) == 8


def test_plain_loop_hook(digits):
    train, _ = digits
    x, y = train.tensors
    model = stalls.SCENARIOS["zero_linear"].build(0)
    opt = tl.optim.SGD(model.parameters(), lr=0.1)
    doctor = StallDoctor(window=50)
    gen = torch.Generator().manual_seed(0)
    found = []
    for _ in range(120):
        idx = torch.randint(0, len(y), (32,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        event = doctor.after_step(model, loss.item(), F.cross_entropy, (x, y), optimizer=opt)
        if event:
            found.append(event)
    assert found and found[0]["verdict"] == "saddle" and found[0]["applied"]
    assert F.cross_entropy(model(x), y).item() < found[0]["loss"]


def test_plateau_remedy_scales_the_learning_rate():
    """Not critical, no negative curvature: a convex quadratic with a tiny step."""
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    model = torch.nn.Module()
    model.w = w
    model.forward = lambda x: w
    loss_fn = lambda out, _: 0.5 * (out ** 2).sum()  # noqa: E731
    opt = tl.optim.Adam([w], lr=1e-6)
    doctor = StallDoctor(window=20)
    event = None
    for _ in range(40):  # a window to suspect the stall, another to confirm it
        opt.zero_grad()
        loss = loss_fn(model(None), None)
        loss.backward()
        opt.step()
        event = doctor.after_step(model, loss.item(), loss_fn, (torch.zeros(1), torch.zeros(1)), optimizer=opt) or event
    assert event["verdict"] == "not_critical" and not event["negative_curvature"]
    assert event["applied"] and "η ×10" in event["action"] and opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_bounded_sample_and_bad_arguments(digits):
    train, _ = digits
    x, y = bounded_sample(train, 100)
    assert x.shape == (100, 64) and torch.equal(y, train.tensors[1][:100])
    loader = torch.utils.data.DataLoader(train, batch_size=64)
    x2, y2 = bounded_sample(loader, 100)
    assert torch.equal(x2, x) and torch.equal(y2, y)
    with pytest.raises(ConfigError, match="StallDoctor: window=5 is not allowed"):
        StallDoctor(window=5)
    with pytest.raises(ConfigError, match="min_rel_improvement=0 is not allowed"):
        StallDoctor(min_rel_improvement=0)


def test_local_minimum_is_named_and_left_alone():
    """At the minimum of a convex quadratic the doctor says so, suggests remedies, changes nothing."""
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    model = torch.nn.Module()
    model.w = w
    model.forward = lambda x: w
    loss_fn = lambda out, _: 0.5 * ((out - 1) ** 2).sum() + 1.0  # noqa: E731  minimum 1.0 at w = (1, 1)
    with torch.no_grad():
        w.fill_(1.0)
    opt = tl.optim.SGD([w], lr=0.1)
    doctor = StallDoctor(window=20)
    events = []
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn(model(None), None)
        loss.backward()
        opt.step()
        event = doctor.after_step(model, loss.item(), loss_fn, (torch.zeros(1), torch.zeros(1)), optimizer=opt)
        events += [event] if event else []
    assert events[0]["verdict"] == "local_minimum" and events[0]["action"] == "none" and not events[0]["applied"]
    assert "re-initialise" in events[0]["message"] and "larger model" in events[0]["message"]
    assert torch.equal(w.detach(), torch.ones(2, dtype=torch.float64))
    assert len(events) <= 3  # it waits four windows after a finding it cannot act on
