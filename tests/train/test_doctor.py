"""The stall doctor on runs that stall (and one that does not), each with and without it."""

import json

import pytest
import torch
import torch.nn.functional as F

import trainlab as tl
from trainlab.errors import ConfigError
from trainlab.experiments import stalls
from trainlab.train.doctor import StallDoctor, bounded_sample
from trainlab.train.doctor.causes import CRAWL_TARGET

from digests import model_digest


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


def test_dead_units_are_named_and_left_for_a_restart():
    treated = stalls.run("dead_units", doctor=True, epochs=4)
    first = treated.events[0]
    assert first["reading"] == "units" and first["action"] == "none" and not first["applied"]
    assert "initialisation" in first["remedy"] and "normalisation" in first["remedy"]
    assert first["readings"]["units"]["source"] == "doctor" and first["readings"]["units"]["value"] > 0.5


@pytest.mark.parametrize("name, reading, action, budget", [
    ("short_full_batch", "curvature", "escape", 60),   # full-batch: within 60 updates of the onset
    ("too_large_step", "stability", "lower η", 60),
    ("crawl", "stability", "raise η", 200),            # mini-batch: within two windows
])
def test_each_scenario_is_noticed_in_time_and_named(name, reading, action, budget):
    epochs = {"crawl": 5, "too_large_step": 60}.get(name)  # enough to see the event and its effect
    plain, treated = stalls.run(name, doctor=False, epochs=epochs), stalls.run(name, doctor=True, epochs=epochs)
    first = treated.events[0]
    assert first["reading"] == reading and action in first["action"] and first["applied"] and first["remedy"]
    assert 0 <= treated.first_event() - plain.onset() <= budget
    assert treated.losses[-1] <= 0.5 * plain.losses[-1]


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
    assert events[0]["step"] == 100  # one window: the check-up at 100 against the one after update 1
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


def _quadratic(lr: float, optimizer=tl.optim.SGD, start: float = 1.0):
    """``L = ½‖w‖² + 1`` at ``w = (start, start)``: no negative curvature, ``λ_max = 1``."""
    w = torch.nn.Parameter(torch.full((2,), start, dtype=torch.float64))
    model = torch.nn.Module()
    model.w = w
    model.forward = lambda x: w
    loss_fn = lambda out, _: 0.5 * (out ** 2).sum() + 1.0  # noqa: E731
    return model, loss_fn, optimizer([w], lr=lr)


def _train(model, loss_fn, opt, doctor, updates, **options):
    events = []
    for _ in range(updates):
        opt.zero_grad()
        loss = loss_fn(model(None), None)
        loss.backward()
        opt.step()
        event = doctor.after_step(model, loss.item(), loss_fn, (torch.zeros(1), torch.zeros(1)), optimizer=opt,
                                  **options)
        events += [event] if event else []
    return events


def test_a_crawl_raises_the_learning_rate_within_stability():
    """SGD with η·λ_max = 1e-6: the loss hardly moves; the doctor reads stability ≪ 1 and raises η to
    CRAWL_TARGET/λ_max (λ_max = 1 here, exactly: the quadratic's Hessian is the identity)."""
    model, loss_fn, opt = _quadratic(1e-6)
    events = _train(model, loss_fn, opt, StallDoctor(window=20), 30)  # the check-up one window in
    event = events[0]
    assert event["verdict"] == "not_critical" and not event["negative_curvature"]
    assert event["reading"] == "stability" and event["readings"]["stability"]["source"] == "diagnosis"
    assert "crawl" in event["remedy"] and event["applied"] and "raise η" in event["action"]
    assert opt.param_groups[0]["lr"] == pytest.approx(CRAWL_TARGET, rel=1e-6)  # η·λ_max = CRAWL_TARGET


def test_full_batch_stall_needs_no_confirmation():
    """Exact losses: a stall is noticed ``full_batch_window`` updates after it began, not two windows."""
    model, loss_fn, opt = _quadratic(1e-6)
    events = _train(model, loss_fn, opt, StallDoctor(window=100, full_batch_window=30), 40, full_batch=True)
    assert len(events) == 1 and events[0]["full_batch"] and events[0]["reading"] == "stability"
    model, loss_fn, opt = _quadratic(1e-6)
    assert _train(model, loss_fn, opt, StallDoctor(window=100), 99) == []  # mini-batch: a window


class _Reading:
    def __init__(self, value, step, **extra):
        self.value, self.step, self.extra = value, step, extra


class _Monitor:
    """What the doctor reads of a :class:`trainlab.instruments.Monitor`: ``latest``."""

    def __init__(self, **readings):
        self.latest = readings


def test_an_adaptive_step_is_judged_by_its_update_ratio():
    """Adam η = 0.05: each step rewrites ~5 % of w. Its update ratio ‖η m̂/(√v̂+ε)‖/‖w‖ decides
    (> 1 %: too large), not the Monitor's preconditioned η·λ_max, which is reported beside it."""
    model, loss_fn, opt = _quadratic(0.05, tl.optim.Adam)
    monitor = _Monitor(stability=_Reading(0.5, 10, threshold=38.0, preconditioned=True, lambda_max=10.0))
    event = _train(model, loss_fn, opt, StallDoctor(window=20, monitor=monitor), 60)[0]
    assert event["cause"] == "step_too_large" and event["reading"] == "update_ratio"
    assert "stability" not in event["readings"] or event["readings"]["stability"]["source"] == "monitor"
    r = event["evidence"]["update_ratio"]
    assert r > 0.01
    assert event["applied"] and "lower η" in event["action"]
    assert event["lr_after"] == pytest.approx(0.05 * min(0.5, max(0.1, 0.01 / r)), rel=1e-12)


def test_a_stability_reading_follows_the_learning_rate_a_schedule_moved():
    """Read at η = 1e-5 (η·λ = 50 > 38); a schedule has since lowered η to 1e-7: η·λ = 0.5 now."""
    model, loss_fn, opt = _quadratic(1e-7, tl.optim.Adam)
    monitor = _Monitor(stability=_Reading(50.0, 10, threshold=38.0, preconditioned=True, lambda_max=5e6))
    event = _train(model, loss_fn, opt, StallDoctor(window=20, monitor=monitor), 30)[0]
    assert event["readings"]["stability"] == {"value": pytest.approx(0.5), "source": "monitor"}
    assert "lower η" not in event["action"]


def test_dead_units_are_named_with_the_lectures_remedy_and_nothing_changes():
    model, loss_fn, opt = _quadratic(0.5, start=0.0)  # at the minimum; η·λ_max = 0.5: no crawl, not too large
    monitor = _Monitor(units=_Reading(0.8, 10, parts={"2": {"dead": 0.8, "saturated": 0.0}}))
    event = _train(model, loss_fn, opt, StallDoctor(window=20, monitor=monitor), 30)[0]
    assert event["reading"] == "units" and event["action"] == "none" and not event["applied"]
    assert "80 % of the units" in event["remedy"] and "initialisation" in event["remedy"]
    assert "normalisation" in event["remedy"] and opt.param_groups[0]["lr"] == 0.5


def test_a_batch_far_below_the_noise_scale_gets_a_larger_batch_suggested():
    model, loss_fn, opt = _quadratic(0.5, start=0.0)
    monitor = _Monitor(noise_scale=_Reading(640.0, 10, batch_size=32, batch_over_noise=0.05))
    event = _train(model, loss_fn, opt, StallDoctor(window=20, monitor=monitor), 30)[0]
    assert event["reading"] == "noise_scale" and "larger batch" in event["remedy"] and not event["applied"]
    assert [f["reading"] for f in event["findings"]] == ["noise_scale", "curvature"]  # and the local minimum


def test_readings_older_than_the_doctors_own_change_are_not_used():
    """A Monitor's units reading taken within the window counts; once the doctor changed η it is
    stale (and with no activation to watch the doctor leaves it out rather than reuse it)."""
    model, loss_fn, opt = _quadratic(1e-6)
    monitor = _Monitor(units=_Reading(0.0, 15))
    doctor = StallDoctor(window=20, monitor=monitor)
    first = _train(model, loss_fn, opt, doctor, 30)[0]
    assert first["readings"]["units"]["source"] == "monitor" and first["applied"]
    assert first["readings"]["stability"]["source"] == "diagnosis"  # SGD: this look's own λ_max
    assert doctor._changed_at == 20  # the check-up one window in
    found = doctor._readings(model, loss_fn, (torch.zeros(1), torch.zeros(1)), opt,
                             tl.diagnose(model, loss_fn, (torch.zeros(1), torch.zeros(1)), progress=False), True, None)
    assert "units" not in found and found["stability"]["source"] == "diagnosis"


def test_a_monitor_reading_older_than_a_window_is_not_used():
    model, loss_fn, opt = _quadratic(1e-6)
    doctor = StallDoctor(window=20, monitor=_Monitor(units=_Reading(0.0, 5)))
    doctor._steps = 30  # the reading is from update 5, more than a window ago
    found = doctor._readings(model, loss_fn, (torch.zeros(1), torch.zeros(1)), opt,
                             tl.diagnose(model, loss_fn, (torch.zeros(1), torch.zeros(1)), progress=False), True, None)
    assert "units" not in found
    doctor._steps = 20  # within the window: the Monitor's reading counts
    found = doctor._readings(model, loss_fn, (torch.zeros(1), torch.zeros(1)), opt,
                             tl.diagnose(model, loss_fn, (torch.zeros(1), torch.zeros(1)), progress=False), True, None)
    assert found["units"]["source"] == "monitor"


def test_the_trainer_s_monitor_is_found_among_its_callbacks(digits):
    train, _ = digits
    model = stalls.SCENARIOS["zero_linear"].build(0)
    monitor, doctor = _Monitor(), StallDoctor()
    trainer = tl.train.Trainer(model, tl.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, train, 256, 1,
                               callbacks=[monitor, doctor], progress=False)
    trainer.fit()
    assert doctor.monitor is monitor


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


@pytest.mark.parametrize("source", ["pair", "dataset", "shuffling_loader"])
def test_a_diagnosis_that_changes_nothing_leaves_no_trace(source):
    """BatchNorm and dropout in training mode, gradients present, one frozen parameter: after
    the doctor suspects, confirms and diagnoses a stall (act=False), every bit is as before."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 4, generator=gen), torch.randint(0, 3, (96,), generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Dropout(0.3), torch.nn.Linear(8, 3))
    model(x).sum().backward()  # running statistics moved, .grad present
    model[0].bias.requires_grad_(False)
    data = {"pair": (x, y), "dataset": torch.utils.data.TensorDataset(x, y),
            "shuffling_loader": torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32,
                                                            shuffle=True)}[source]
    doctor = StallDoctor(window=10, act=False, max_samples=64)
    before = model_digest(model)
    events = [doctor.after_step(model, 1.0, F.cross_entropy, data) for _ in range(20)]  # a flat loss: a stall
    found = [e for e in events if e]
    assert len(found) == 1 and not found[0]["applied"] and found[0]["samples"] == 64
    assert model_digest(model) == before
    assert model.training and model[0].bias.grad is not None


def test_escape_in_a_saddles_neighbourhood():
    """``L = ½w₁² + ¼(w₂² − 1)²`` at ``w = (0.05, 0)``: the gradient (0.05) is above grad_tol, so
    the point is not critical, but ``∂²L/∂w₂² = −1`` there. The doctor still escapes (plain
    ``escape`` refuses away from a critical point) and the loss drops."""
    w = torch.nn.Parameter(torch.tensor([0.05, 0.0], dtype=torch.float64))
    model = torch.nn.Module()
    model.w = w
    model.forward = lambda x: w
    loss_fn = lambda out, _: 0.5 * out[0] ** 2 + 0.25 * (out[1] ** 2 - 1) ** 2  # noqa: E731
    batch = (torch.zeros(1), torch.zeros(1))
    with pytest.raises(ConfigError, match="escape refused"):
        tl.escape(model, loss_fn, batch, tl.diagnose(model, loss_fn, batch, grad_tol=1e-2, progress=False))
    assert w.tolist() == [0.05, 0.0]
    doctor = StallDoctor(window=10)
    before = loss_fn(w, None).item()
    events = [e for e in (doctor.after_step(model, before, loss_fn, batch) for _ in range(20)) if e]
    assert events[0]["verdict"] == "not_critical" and events[0]["negative_curvature"]
    assert events[0]["action"] == "escape" and events[0]["applied"] and "\n" not in events[0]["message"]
    assert "neighbourhood" in events[0]["message"]
    assert loss_fn(w, None).item() < before - 0.1


def test_a_real_monitor_s_readings_decide(digits):
    """A plain loop watched by a :class:`trainlab.instruments.Monitor`: at the stall the doctor
    takes its units reading instead of measuring it again."""
    from trainlab.instruments import Monitor, Stability, Units

    train, _ = digits
    x, y = train.tensors
    model = tl.nn.mlp(64, [16], 10, seed=0)
    opt = tl.optim.SGD(model.parameters(), lr=1e-4)  # a crawl
    monitor = Monitor(every=10, sample=128, instruments=[Stability(every=10), Units(every=10)], progress=False)
    doctor = StallDoctor(window=20, monitor=monitor, max_samples=128)
    events = []
    for _ in range(30):  # the same batch each time: no noise to hide the stall
        loss = F.cross_entropy(model(x[:128]), y[:128])
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.after_step(model, loss.item(), F.cross_entropy, train, opt, batch_size=32)
        events += [e for e in [doctor.after_step(model, loss.item(), F.cross_entropy, train, optimizer=opt)] if e]
    event = events[0]
    assert event["readings"]["units"]["source"] == "monitor"  # read within the window: not measured again
    # SGD's stability is η times this look's own λ_max (fresher than the Monitor's)
    assert event["readings"]["stability"] == {"value": pytest.approx(1e-4 * event["lambda_max"], rel=1e-12),
                                              "source": "diagnosis"}
    assert event["reading"] == "stability" and "raise η" in event["action"]
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4 * event["evidence"]["factor"], rel=1e-12)
