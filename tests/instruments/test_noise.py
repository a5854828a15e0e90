"""Gradient-noise instruments against independent references: per-sample gradients from a
loop of single-sample ``backward`` calls, and B_simple, GSNR and the norm test computed by
brute force from all of them."""

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlab as tl
from trainlab.errors import ConfigError
from trainlab.instruments.noise import GSNR, Moments, NoiseScale, _looped_gradients, gradient_moments, \
    per_sample_gradients

from digests import model_digest


class Attention(nn.Module):
    """A tiny transformer classifier over sequences of 5 tokens of 4 features."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.encoder(self.embed(x))
        h, _ = self.attn(h, h, h)
        return self.out(h.mean(1))


def mlp_bn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()


def data(shape=(5,), n=21, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def loop_gradients(model, x, y):
    """Row i: ∇ of sample i's loss, one backward pass per sample."""
    rows = []
    for i in range(len(y)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1)
                               for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def context(model, x, y, batch_size=None, mode="eval", batch=None, batch_loss=None):
    return types.SimpleNamespace(model=model, loss_fn=F.cross_entropy, batch=(x, y) if batch is None else batch,
                                 batch_loss=batch_loss, optimizer=None, step=0, lr=None, batch_size=batch_size,
                                 mode=mode, seed=0, previous=None)


@pytest.mark.parametrize("make, shape", [(mlp_bn, (5,)), (lambda: Attention().double(), (5, 4))])
def test_per_sample_gradients_equal_a_loop_of_single_sample_gradients(make, shape):
    torch.manual_seed(0)
    model = make().eval()
    x, y = data(shape)
    expected = loop_gradients(model, x, y)
    got = torch.cat(list(per_sample_gradients(model, F.cross_entropy, (x, y), chunk=8)))  # 8 + 8 + 5
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_per_sample_gradients_through_batch_loss():
    model = Attention().double().eval()
    x, y = data((5, 4))
    batch = {"tokens": x, "labels": y, "scale": torch.tensor(2.0, dtype=torch.float64), "reduction": "mean"}

    def batch_loss(m, b):
        return b["scale"] * F.cross_entropy(m(b["tokens"]), b["labels"], reduction=b["reduction"])

    got = torch.cat(list(per_sample_gradients(model, None, batch, chunk=4, batch_loss=batch_loss)))
    torch.testing.assert_close(got, 2 * loop_gradients(model, x, y), rtol=1e-10, atol=1e-12)


def brute_force(G):
    """B_simple, GSNR and tr Σ from all per-sample gradients (rows)."""
    mean = G.mean(0)
    centred = G - mean
    var = (centred ** 2).sum(0) / (len(G) - 1)
    trace = float(var.sum())
    norm_sq = float(mean @ mean)
    rms = (G ** 2).mean(0).sqrt()
    keep = var.sqrt() > 100 * torch.finfo(G.dtype).eps * rms.max()  # a spread rounding could make: out
    return trace / norm_sq, float((mean[keep] ** 2 / var[keep]).mean()), trace, norm_sq


def test_noise_scale_gsnr_and_norm_test_equal_brute_force():
    model = mlp_bn().eval()
    x, y = data(n=50)
    b_simple, gsnr, trace, norm_sq = brute_force(loop_gradients(model, x, y))
    ctx = context(model, x, y, batch_size=16)
    noise = NoiseScale(every=1, chunk=16).read(ctx)
    assert noise["value"] == pytest.approx(b_simple, rel=1e-10)
    assert noise["trace_sigma"] == pytest.approx(trace, rel=1e-10)
    assert noise["batch_size"] == 16 and noise["batch_over_noise"] == pytest.approx(16 / b_simple, rel=1e-10)
    debiased = norm_sq - trace / 50
    assert noise["debiased"] == (pytest.approx(trace / debiased, rel=1e-10) if debiased > 0 else None)
    r = GSNR(every=1, chunk=16).read(ctx)
    assert r["value"] == pytest.approx(gsnr, rel=1e-10)
    assert r["norm_test"] == pytest.approx(trace / (16 * norm_sq), rel=1e-10)
    assert r["norm_test_passes"] == (trace / (16 * norm_sq) <= 0.81)
    big = GSNR(every=1, theta=100.0).read(context(model, x, y, batch_size=16))
    assert big["norm_test_passes"] is True
    unknown = NoiseScale(every=1).read(context(model, x, y))
    assert unknown["batch_over_noise"] is None


def test_noise_readings_on_an_attention_model_equal_brute_force():
    model = Attention().double().eval()
    x, y = data((5, 4), n=30)
    b_simple, gsnr, trace, norm_sq = brute_force(loop_gradients(model, x, y))
    ctx = context(model, x, y, batch_size=8)
    noise = NoiseScale(every=1, chunk=7).read(ctx)
    assert noise["value"] == pytest.approx(b_simple, rel=1e-9)
    assert noise["debiased"] == pytest.approx(trace / (norm_sq - trace / 30), rel=1e-9)
    r = GSNR(every=1, chunk=7).read(ctx)
    assert r["value"] == pytest.approx(gsnr, rel=1e-9)
    assert r["coordinates"] == sum(p.numel() for p in model.parameters()) - 16  # the two key biases: zero gradient


def test_noise_scale_and_gsnr_share_one_pass_per_context():
    model = mlp_bn().eval()
    x, y = data()
    ctx = context(model, x, y, batch_size=4)
    first = gradient_moments(ctx)
    assert gradient_moments(ctx) is first
    part = gradient_moments(ctx, max_samples=10)
    assert part.count == 10 and part is not first
    b_simple = brute_force(loop_gradients(model, x[:10], y[:10]))[0]
    assert NoiseScale(every=1, max_samples=10).read(ctx)["value"] == pytest.approx(b_simple, rel=1e-10)


def test_batch_norm_in_training_mode_is_refused():
    model = mlp_bn()
    x, y = data()
    with pytest.raises(ConfigError, match="BatchNorm in training mode"):
        NoiseScale(every=1).read(context(model, x, y, mode="train"))
    NoiseScale(every=1).read(context(model, x, y, mode="eval"))  # the default mode is exact


def test_dropout_in_training_mode_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    x, y = data()
    with pytest.raises(ConfigError, match="random"):
        GSNR(every=1).read(context(model, x, y, mode="train"))


def test_readings_leave_the_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 3)).double()
    x, y = data()
    opt = tl.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), y).backward()  # training mode, a gradient left in .grad
    opt.step()
    before = model_digest(model)
    for inst in (NoiseScale(every=1), GSNR(every=1)):
        inst.read(context(model, x, y, batch_size=8))
        assert model_digest(model) == before, inst.name


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="theta=0"):
        GSNR(theta=0)
    with pytest.raises(ConfigError, match="chunk=0"):
        next(per_sample_gradients(mlp_bn(), F.cross_entropy, data(), chunk=0))
    with pytest.raises(ConfigError, match="max_samples=1"):
        NoiseScale(max_samples=1)


class MaskedAttention(nn.Module):
    """Attention whose forward asks a data-dependent question of its mask, as Hugging Face's
    mask code does (``padding_mask.all()``): vmap cannot run it."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, batch):
        x, mask = batch["x"], batch["mask"]
        h = self.embed(x)
        pad = None if bool(mask.all()) else ~mask
        h, _ = self.attn(h, h, h, key_padding_mask=pad)
        return self.out((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))


def masked_batch(n=13):
    x, y = data((5, 4), n=n)
    mask = torch.ones(n, 5, dtype=torch.bool)
    mask[::3, 3:] = False  # every third sample padded after 3 tokens
    return {"x": x, "mask": mask, "y": y}


def masked_loss(model, batch):
    return F.cross_entropy(model(batch), batch["y"])


def test_per_sample_gradients_fall_back_to_a_loop_where_vmap_fails_with_the_same_numbers():
    torch.manual_seed(0)
    model = MaskedAttention().double().eval()
    batch = masked_batch()
    with pytest.raises(RuntimeError, match="vmap"):  # the premise: vmap cannot run this model
        torch.func.vmap(lambda b: model({k: v[None] for k, v in b.items()}).sum())(batch)
    rows = []
    for i in range(13):  # the reference: a plain loop of backward passes
        model.zero_grad()
        masked_loss(model, {k: v[i:i + 1] for k, v in batch.items()}).backward()
        rows.append(torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1)
                               for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    before = model_digest(model)
    got = torch.cat(list(per_sample_gradients(model, None, batch, chunk=5, batch_loss=masked_loss)))
    torch.testing.assert_close(got, torch.stack(rows), rtol=1e-10, atol=1e-12)
    assert model_digest(model) == before
    ctx = context(model, None, None, batch=batch, batch_loss=masked_loss, batch_size=4)
    b_simple = brute_force(torch.stack(rows))[0]
    assert NoiseScale(every=1).read(ctx)["value"] == pytest.approx(b_simple, rel=1e-9)


def test_the_loop_fallback_equals_the_vmap_path_where_both_work():
    model = Attention().double().eval()
    x, y = data((5, 4), n=9)
    vmapped = torch.cat(list(per_sample_gradients(model, F.cross_entropy, (x, y))))
    looped = _looped_gradients(model, F.cross_entropy, None, (x, y), list(model.parameters()))
    torch.testing.assert_close(looped, vmapped, rtol=1e-10, atol=1e-12)


def test_gsnr_leaves_out_coordinates_whose_spread_is_rounding():
    """Coordinate 0 is the same for every sample up to float32 rounding (the output bias of a
    token absent from the sample, once an LM predicts one distribution everywhere); coordinate 1
    is zero up to rounding. Counted, either would put ~10¹³ into the mean."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(40, 6, generator=gen) * torch.tensor([1, 1, 0.5, 0.2, 1.0, 0.01]) + torch.tensor(
        [0, 0, 0.3, -0.1, 0.05, 0.002])
    rows[:, 0] = 0.5 + 0.5 * torch.finfo(torch.float32).eps * torch.randint(-2, 3, (40,), generator=gen)
    rows[:, 1] = torch.finfo(torch.float32).eps * torch.randn(40, generator=gen)
    wide = rows.double()
    mean, var = wide.mean(0), wide.var(0)
    scale = wide.square().mean(0).sqrt().max()
    keep = var.sqrt() > 100 * 1.1920928955078125e-07 * scale  # the documented rule, from the float32 rows
    assert keep.tolist() == [False, False, True, True, True, True]
    expected = float((mean[keep] ** 2 / var[keep]).mean())
    ctx = types.SimpleNamespace(batch=None, mode="eval", batch_size=None)
    ctx._gradient_moments = ((128, None, "eval"), Moments.of(iter([rows])))
    r = GSNR(every=1).read(ctx)
    assert r["coordinates"] == 4
    assert r["value"] == pytest.approx(expected, rel=1e-6)
    assert r["value"] < 10


class WithUnused(nn.Module):
    """A parameter the loss never reaches: vmap gives its per-sample gradients as one expanded zero
    row (stride 0), which the moments must not write in place."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.unused, self.last = nn.Linear(5, 6), nn.Parameter(torch.ones(4)), nn.Linear(6, 3)

    def forward(self, x):
        return self.last(torch.tanh(self.first(x)))


@pytest.mark.parametrize("make", [lambda: mlp_bn().eval(), lambda: WithUnused().double()])
def test_moments_taken_piece_by_piece_in_place_equal_the_brute_force_ones(make):
    """gradient_moments takes each chunk's per-parameter pieces and overwrites them with their
    deviations (no concatenated copy): the same moments as from a loop of single-sample
    gradients (means and squared deviations by brute force), chunks of 8 + 8 + 5."""
    model = make()
    x, y = data()
    rows = loop_gradients(model, x, y)
    with torch.no_grad():
        got = gradient_moments(context(model, x, y), chunk=8)
    eps = torch.finfo(torch.float64).eps
    scale = float(rows.abs().max())
    assert got.count == len(y)
    assert torch.allclose(got.mean, rows.mean(0), rtol=0, atol=10 * len(y) * eps * scale)
    assert torch.allclose(got.m2, (rows - rows.mean(0)).square().sum(0), rtol=0, atol=10 * len(y) * eps * scale ** 2)
    assert got.m2.abs().sum() > 0
    if isinstance(model, WithUnused):  # a module's own parameters come first: its 4 coordinates
        assert got.mean[:4].abs().max() == 0 and got.m2[:4].abs().max() == 0
