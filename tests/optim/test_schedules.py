"""Schedules against their formulas, computed independently here, and torch's own schedulers."""

import math

import pytest
import torch

from trainlab.errors import ConfigError
from trainlab.optim import SGD, schedules
from tolerance import tol


def optimizer(lr=0.5, groups=1):
    return SGD([{"params": [torch.zeros(1, requires_grad=True)]} for _ in range(groups)], lr=lr)


def lrs(scheduler, steps, group=0):
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[group]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_constant():
    assert lrs(schedules.constant(optimizer()), 5) == [0.5] * 5


def test_step_decay_equals_torch_steplr():
    ref = torch.optim.lr_scheduler.StepLR(optimizer(), step_size=3, gamma=0.5)
    # 12 successive multiplications by gamma, each rounded
    ours = schedules.step_decay(optimizer(), 3, gamma=0.5)
    assert lrs(ours, 12) == pytest.approx(lrs(ref, 12), rel=tol(torch.float64, n=12))


def test_exponential_decay_equals_torch_exponentiallr_and_decay_steps_stretches_it():
    ref = torch.optim.lr_scheduler.ExponentialLR(optimizer(), gamma=0.9)
    assert lrs(schedules.exponential_decay(optimizer(), 0.9), 10) == pytest.approx(lrs(ref, 10), rel=1e-12)
    assert lrs(schedules.exponential_decay(optimizer(), 0.9, decay_steps=4), 9) == \
        pytest.approx([0.5 * 0.9 ** (t / 4) for t in range(9)], rel=1e-12)


def test_linear_warmup_never_uses_a_zero_rate():
    assert lrs(schedules.linear_warmup(optimizer(), 4), 7) == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5, 0.5, 0.5])


def test_warmup_cosine_formula():
    w, total, lr, min_lr = 5, 25, 0.5, 0.05
    got = lrs(schedules.warmup_cosine(optimizer(lr), warmup_steps=w, total_steps=total, min_lr=min_lr), 30)
    expected = [lr * (t + 1) / w if t < w else
                min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1, (t - w) / (total - w))))
                for t in range(30)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert max(got) == lr and got[-1] == pytest.approx(min_lr)


def test_warmup_cosine_without_warmup_equals_torch_cosine():
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer(), T_max=20, eta_min=0.01)
    ours = schedules.warmup_cosine(optimizer(), warmup_steps=0, total_steps=20, min_lr=0.01)
    assert lrs(ours, 21) == pytest.approx(lrs(ref, 21), rel=1e-9)


def test_warmup_inverse_sqrt_is_the_transformer_schedule():
    d, w = 512, 4000
    got = lrs(schedules.warmup_inverse_sqrt(optimizer(lr=1.0), warmup_steps=w, d_model=d), 8000)
    expected = [d ** -0.5 * min(s ** -0.5, s * w ** -1.5) for s in range(1, 8001)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert max(range(8000), key=got.__getitem__) == w - 1  # peak at update w
    normalised = lrs(schedules.warmup_inverse_sqrt(optimizer(lr=0.3), warmup_steps=w), 8000)
    assert max(normalised) == pytest.approx(0.3)


def test_min_lr_is_absolute_per_param_group():
    opt = optimizer(lr=0.5, groups=2)
    opt.param_groups[1]["lr"] = 0.1
    s = schedules.warmup_cosine(opt, 0, 10, min_lr=0.05)
    lrs(s, 12)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.05])


def test_chain_multiplies_and_sequential_concatenates():
    opt = optimizer()
    chained = schedules.chain(schedules.linear_warmup(opt, 4), schedules.step_decay(opt, 5, 0.5))
    assert lrs(chained, 12) == pytest.approx([0.5 * min(1, (t + 1) / 4) * 0.5 ** (t // 5) for t in range(12)])
    opt = optimizer()
    seq = schedules.sequential([schedules.linear_warmup(opt, 3), schedules.exponential_decay(opt, 0.5)], [3])
    assert lrs(seq, 7) == pytest.approx([0.5 / 3, 1 / 3, 0.5, 0.5, 0.25, 0.125, 0.0625])


def test_scheduler_state_dict_round_trip():
    opt = optimizer()
    s = schedules.warmup_cosine(opt, 3, 20)
    lrs(s, 7)
    state, opt_state = s.state_dict(), opt.state_dict()
    rest = lrs(s, 10)
    opt2 = optimizer()  # PyTorch's resume order: build both, then load both
    s2 = schedules.warmup_cosine(opt2, 3, 20)
    opt2.load_state_dict(opt_state)
    s2.load_state_dict(state)
    assert lrs(s2, 10) == rest
    assert all(v is None for v in state["lr_lambdas"])  # only plain numbers are saved, no code


@pytest.mark.parametrize("make, match", [
    (lambda o: schedules.step_decay(o, 0), "step_decay: step_size=0 is not allowed; expected an integer >= 1"),
    (lambda o: schedules.step_decay(o, 2, gamma=0), r"gamma=0 is not allowed; expected a number in \(0, 1\]"),
    (lambda o: schedules.linear_warmup(o, 0), "warmup_steps=0"),
    (lambda o: schedules.warmup_cosine(o, 10, 10), "total_steps=10 is not allowed; expected an integer >= 11"),
    (lambda o: schedules.warmup_cosine(o, 1, 10, min_lr=1.0), r"min_lr=1.0 is not allowed; expected a number in \[0, 0.5\]"),
    (lambda o: schedules.warmup_inverse_sqrt(o, 10, d_model=0), "d_model=0"),
    (lambda o: schedules.chain(), "needs at least one schedule"),
    (lambda o: schedules.chain(torch.optim.lr_scheduler.StepLR(o, 2)), "got StepLR"),
    (lambda o: schedules.chain(schedules.constant(o), schedules.constant(optimizer())), "different ones"),
    (lambda o: schedules.sequential([schedules.constant(o), schedules.constant(o)], [0]), r"milestones=\[0\]"),
    (lambda o: schedules.create("cosine", o), "unknown schedule 'cosine'"),
    (lambda o: schedules.create("warmup_cosine", o, warmup_steps=3), "needs total_steps"),
    (lambda o: schedules.create("step_decay", o, step_size=3, warmup=2), "takes no 'warmup'"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ConfigError, match=match):
        make(optimizer())


def test_trace_counts_updates_from_zero():
    assert schedules.trace("linear_warmup", 3, lr=0.3, warmup_steps=3) == pytest.approx([0.1, 0.2, 0.3])
