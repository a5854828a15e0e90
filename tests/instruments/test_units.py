"""Dead and saturated unit shares against a manual count of the activations."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.errors import ConfigError
from trainlab.instruments import Context, Monitor, Units


def planted(seed=0):
    """4 of 10 ReLU units dead (bias -100), 3 of 8 tanh (weights ×100) and 2 of 6 sigmoid units saturated."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 6), nn.Sigmoid(),
                      nn.Linear(6, 3))
    with torch.no_grad():
        m[0].bias[:4] = -100.0
        m[2].weight[:3] = 100.0 * m[2].weight[:3].abs()  # inputs are ReLU outputs >= 0: z >= 5
        m[2].bias[:3] = 5.0
        m[4].bias[:2] = -80.0  # |w·h| <= Σ|w| is small next to it: sigmoid ≈ 0
    return m


def manual(m, x):
    """Per activation module: the share of units stuck on every sample, counted by hand."""
    shares, h = {}, x
    for i, layer in enumerate(m):
        h = layer(h)
        if isinstance(layer, nn.ReLU):
            shares[str(i)] = {"dead": (h == 0).all(0).float().mean().item(), "saturated": 0.0}
        elif isinstance(layer, nn.Tanh):
            shares[str(i)] = {"dead": 0.0, "saturated": (h.abs() > 0.99).all(0).float().mean().item()}
        elif isinstance(layer, nn.Sigmoid):
            shares[str(i)] = {"dead": 0.0, "saturated": ((h < 0.01) | (h > 0.99)).all(0).float().mean().item()}
    return shares


def test_unit_shares_match_a_manual_count():
    m = planted()
    x, y = torch.randn(200, 6, generator=torch.Generator().manual_seed(1)), torch.zeros(200, dtype=torch.long)
    out = Units().read(Context(m, F.cross_entropy, (x, y)))
    with torch.no_grad():
        expected = manual(m, x)
    assert out["parts"].keys() == expected.keys()
    for name, shares in expected.items():
        assert out["parts"][name] == pytest.approx(shares)
    assert expected["1"]["dead"] >= 0.4 and expected["3"]["saturated"] >= 3 / 8 and expected["5"]["saturated"] >= 2 / 6
    stuck = 10 * expected["1"]["dead"] + 8 * expected["3"]["saturated"] + 6 * expected["5"]["saturated"]
    assert out["value"] == pytest.approx(stuck / 24) and out["n_units"] == 24


def test_a_healthy_network_has_no_stuck_units():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(256, 6), torch.zeros(256, dtype=torch.long)
    assert Units().read(Context(m, F.cross_entropy, (x, y)))["value"] == 0.0


def test_a_convolution_channel_is_one_unit():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 5, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with torch.no_grad():
        m[0].bias[:2] = -100.0
    x, y = torch.randn(20, 1, 6, 6), torch.zeros(20, dtype=torch.long)
    m(x)
    out = Units().read(Context(m, F.cross_entropy, (x, y)))
    with torch.no_grad():
        h = m[1](m[0](x))
    assert out["parts"]["1"]["dead"] == pytest.approx((h == 0).all(3).all(2).all(0).float().mean().item())
    assert out["parts"]["1"]["dead"] == pytest.approx(0.4)


def test_a_module_called_twice_is_counted_per_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Linear(4, 4), nn.Linear(4, 2), nn.ReLU()
            with torch.no_grad():
                self.a.bias[0] = -100.0

        def forward(self, x):
            return self.b(self.act(self.a(self.act(x))))

    x, y = torch.randn(50, 4), torch.zeros(50, dtype=torch.long)
    out = Units().read(Context(Twice(), F.cross_entropy, (x, y)))
    assert set(out["parts"]) == {"act", "act#2"} and out["parts"]["act#2"]["dead"] >= 0.25


def test_hooks_are_removed_also_when_the_forward_pass_fails():
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(5, 2))  # the last layer does not fit
    with pytest.raises(RuntimeError):
        Units().read(Context(m, F.cross_entropy, (torch.randn(8, 4), torch.zeros(8, dtype=torch.long))))
    assert all(not mod._forward_hooks for mod in m.modules())


def test_a_model_without_activations_is_refused_and_the_monitor_goes_on():
    m = nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ConfigError, match="no nn.ReLU"):
        Units().read(Context(m, F.cross_entropy, (x, y)))
    monitor = Monitor(every=1, instruments=[Units()])
    with pytest.warns(RuntimeWarning, match="instrument 'units' failed"):
        (r,) = monitor.after_step(m, None, F.cross_entropy, (x, y))
    assert math.isnan(r.value) and "no nn.ReLU" in r.extra["error"] and "\n" not in r.extra["error"]


def test_functional_activations_are_read_where_they_are_called():
    """``F.relu`` inside ``nn.TransformerEncoderLayer`` (no ReLU module), ``F.gelu`` in a forward and
    an ``nn.GELU``: 4 of 16 ReLU units planted dead, GELU units dead where every input is below -3."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.mid, self.act, self.out = nn.Linear(8, 6), nn.GELU(), nn.Linear(6, 3)
            with torch.no_grad():
                self.enc.linear1.bias[:4] = -100.0
                self.mid.bias[:2] = -50.0

        def forward(self, x):
            h = self.enc(x)
            return self.out(self.act(self.mid(h)) + F.gelu(self.mid(h))).mean(1)

    m = Net().eval()
    x, y = torch.randn(12, 5, 8), torch.zeros(12, dtype=torch.long)
    with torch.no_grad():  # by hand
        h = m.enc.self_attn(x, x, x, need_weights=False)[0]
        z1 = m.enc.linear1(m.enc.norm1(x + h))
        z2 = m.mid(m.enc(x))
    relu_dead = (z1 <= 0).reshape(-1, 16).all(0).sum().item() / 16
    gelu_dead = (z2 < -3).reshape(-1, 6).all(0).sum().item() / 6
    assert relu_dead == 0.25 and gelu_dead == pytest.approx(2 / 6)
    out = Units().read(Context(m, F.cross_entropy, (x, y)))
    assert out["parts"] == {"enc": {"dead": relu_dead, "saturated": 0.0}, "act": {"dead": gelu_dead, "saturated": 0.0},
                            "model": {"dead": gelu_dead, "saturated": 0.0}}
    assert out["n_units"] == 16 + 6 + 6
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_a_model_without_activations_is_not_run_again():
    calls = []
    m = nn.Linear(4, 2)
    m.register_forward_hook(lambda *a: calls.append(1))
    units, ctx = Units(), Context(m, F.cross_entropy, (torch.randn(8, 4), torch.zeros(8, dtype=torch.long)))
    for _ in range(3):
        with pytest.raises(ConfigError, match="no nn.ReLU"):
            units.read(ctx)
    assert len(calls) == 1
