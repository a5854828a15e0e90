"""grad_norm against PyTorch's own autograd, update_ratio against a manual computation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from trainlab.instruments import Context, GradNorm, Monitor, UpdateRatio

from tolerance import tol


def data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Dropout(0.2), nn.Linear(7, 3))


def norm_tol(m, samples=1):
    """Relative tolerance of a float32 norm over ``m``'s parameters of gradients summed over ``samples``."""
    return tol(torch.float32, samples) + tol(torch.float32, sum(p.numel() for p in m.parameters()))


def train_steps(m, ds, monitor, steps, lr=0.1):
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    x, y = ds.tensors
    readings, before = [], []
    for _ in range(steps):
        before.append({k: p.detach().clone() for k, p in m.named_parameters()})
        loss = F.cross_entropy(m(x[:20]), y[:20])
        opt.zero_grad()
        loss.backward()
        opt.step()
        readings += monitor.after_step(m, loss, F.cross_entropy, ds, opt)
    return readings, before


def test_grad_norm_is_autograds_norm_on_the_sample_in_eval_mode():
    ds, m = data(), model()
    readings, _ = train_steps(m, ds, Monitor(every=2, sample=32, instruments=[GradNorm()]), 2)
    baseline, r = readings  # update 1 (a baseline) and update 2
    assert baseline.step == 1 and r.step == 2
    # reference: torch's own backward on the first 32 samples, eval mode (running statistics, no dropout)
    m.eval()
    m.zero_grad()
    F.cross_entropy(m(ds.tensors[0][:32]), ds.tensors[1][:32]).backward()
    expected = {k: p.grad.norm().item() for k, p in m.named_parameters()}
    assert r.step == 2 and r.instrument == "grad_norm"
    assert r.extra["parts"] == pytest.approx(expected, rel=norm_tol(m, 32))
    total = torch.nn.utils.get_total_norm([p.grad for p in m.parameters()]).item()
    assert r.value == pytest.approx(total, rel=norm_tol(m, 32))


def test_grad_norm_in_train_mode_uses_batch_statistics():
    ds, m = data(), model()
    m[3].p = 0.0  # no dropout, so train mode is deterministic
    ctx = Context(m, F.cross_entropy, ds.tensors, step=1)
    m.train()
    value = GradNorm().read(ctx)["value"]
    m.zero_grad()
    F.cross_entropy(m(ds.tensors[0]), ds.tensors[1]).backward()
    total = torch.nn.utils.get_total_norm([p.grad for p in m.parameters()]).item()
    assert value == pytest.approx(total, rel=norm_tol(m, len(ds)))


def test_grad_norm_reports_zero_for_an_unused_parameter_and_skips_frozen_ones():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(5, 3), nn.Linear(2, 2)
            self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)

        def forward(self, x):
            return self.used(x) * self.frozen

    out = GradNorm().read(Context(Net(), F.cross_entropy, data().tensors))
    assert out["parts"]["unused.weight"] == 0.0 and "frozen" not in out["parts"]


def test_update_ratio_is_the_relative_change_of_the_last_update():
    ds, m = data(), model()
    readings, before = train_steps(m, ds, Monitor(every=3, instruments=[UpdateRatio()]), 9)
    assert [r.step for r in readings] == [3, 6, 9]
    # the last reading: the parameters now against those just before update 9
    previous, now = before[8], dict(m.named_parameters())
    expected = {k: ((now[k] - previous[k]).norm() / now[k].norm()).item() for k in now}
    assert readings[-1].extra["parts"] == pytest.approx(expected, rel=norm_tol(m))  # norms of the same differences
    delta = torch.cat([(now[k] - previous[k]).flatten() for k in now]).norm()
    size = torch.cat([now[k].flatten() for k in now]).norm()
    assert readings[-1].value == pytest.approx((delta / size).item(), rel=norm_tol(m))


def test_update_ratio_waits_for_a_known_previous_update():
    """A plain loop's first update is unseen: with every=1 the first reading is at step 2."""
    ds, m = data(), model()
    readings, _ = train_steps(m, ds, Monitor(every=1, instruments=[UpdateRatio()]), 3)
    assert [r.step for r in readings] == [2, 3]


def test_update_ratio_of_a_zero_tensor_is_nan():
    m = nn.Linear(2, 1)
    with torch.no_grad():
        m.bias.zero_()
    out = UpdateRatio().read(Context(m, None, None, previous={k: p.detach() + 1 for k, p in m.named_parameters()}))
    assert math.isnan(out["parts"]["bias"]) and math.isfinite(out["value"])
