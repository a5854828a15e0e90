"""Every data form gives the gradient and Hessian products of the full-data mean loss, checked
against torch.func on all the data at once; the checks (non-finite data or loss, a summed loss)
refuse what would be silently wrong; the streamed and chunked products equal the kept graph's."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset, TensorDataset

import trainlab as tl
from trainlab.curvature import HessianOperator, analysis_mode, gradient, hessian, hvp
from trainlab.data.batches import DATASET_CHUNK, as_batches, batch_size_of
from trainlab.errors import ConfigError, DataError


def reference(model, x, y, loss_fn=F.cross_entropy):
    """(∇L, v ↦ H v) of the full-data mean loss, from torch.func on one flat parameter vector."""
    names = [n for n, p in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(theta):
        chunks = theta.split([s.numel() for s in shapes])
        return loss_fn(functional_call(model, {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.func.grad(f)(theta), lambda v: torch.func.jvp(torch.func.grad(f), (theta,), (v,))[1]


class Samples(Dataset):
    """A plain map-style Dataset of (x_i, y_i) pairs."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def forms(x, y):
    return {
        "pair": (x, y),
        "list of pairs": [(x[:7], y[:7]), (x[7:30], y[7:30]), (x[30:], y[30:])],
        "tuple of lists": ([x[:20], y[:20]], [x[20:], y[20:]]),
        "DataLoader": DataLoader(TensorDataset(x, y), batch_size=16),
        "TensorDataset": TensorDataset(x, y),
        "Dataset": Samples(x, y),
        "generator": ((x[i:i + 9], y[i:i + 9]) for i in range(0, 40, 9)),
    }


@pytest.mark.parametrize("form", list(forms(torch.zeros(40, 1), torch.zeros(40))))
def test_every_data_form_gives_the_full_data_gradient_and_hvp(small_mlp_problem, form):
    model, x, y = small_mlp_problem
    g_ref, hvp_ref = reference(model, x, y)
    v = torch.randn(g_ref.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(gradient(model, F.cross_entropy, forms(x, y)[form]), g_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(hvp(model, F.cross_entropy, forms(x, y)[form], v), hvp_ref(v), rtol=1e-11, atol=1e-13)


def test_dict_and_extra_field_batches_through_batch_loss(small_mlp_problem):
    model, x, y = small_mlp_problem
    w = torch.rand(40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g_ref, hvp_ref = reference(model, x, y)
    v = torch.randn(g_ref.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def dict_loss(m, b):
        return F.cross_entropy(m(b["inputs"]), b["labels"])

    dicts = [{"inputs": x[:25], "labels": y[:25], "note": "kept as is"}, {"inputs": x[25:], "labels": y[25:],
                                                                           "note": "x"}]
    torch.testing.assert_close(gradient(model, None, dicts, batch_loss=dict_loss), g_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(hvp(model, None, dicts, v, batch_loss=dict_loss), hvp_ref(v), rtol=1e-11, atol=1e-13)

    # (x, y, extra): a per-sample weight the hook uses; the reference weights the same way
    def weighted(m, b):
        xb, yb, wb = b
        return (F.cross_entropy(m(xb), yb, reduction="none") * wb).mean()

    triples = DataLoader(TensorDataset(x, y, w), batch_size=16)
    expected, _ = reference(model, x, y, lambda out, t: (F.cross_entropy(out, t, reduction="none") * w).mean())
    torch.testing.assert_close(gradient(model, None, triples, batch_loss=weighted), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gradient(model, None, TensorDataset(x, y, w), batch_loss=weighted), expected,
                               rtol=1e-12, atol=1e-14)
    with pytest.raises(DataError, match="each batch must be an \\(inputs, targets\\) pair.*batch_loss"):
        gradient(model, F.cross_entropy, triples)
    with pytest.raises(ConfigError, match="loss_fn=None needs batch_loss"):
        gradient(model, None, (x, y))


def test_unequal_batches_are_weighted_by_their_samples(small_mlp_problem):
    model, x, y = small_mlp_problem
    sizes = [1, 3, 17, 19]
    batches = list(zip(x.split(sizes), y.split(sizes)))
    full = hessian(model, F.cross_entropy, (x, y))
    torch.testing.assert_close(hessian(model, F.cross_entropy, batches), full, rtol=1e-12, atol=1e-14)
    plain = sum(hessian(model, F.cross_entropy, b) for b in batches) / len(batches)  # what a plain mean gives
    assert (plain - full).abs().max() > 1e-3


def test_a_dataset_larger_than_one_chunk():
    gen = torch.Generator().manual_seed(0)
    n = 2 * DATASET_CHUNK + 77
    x, y = torch.randn(n, 3, generator=gen, dtype=torch.float64), torch.randn(n, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(3, 1).double()
    chunks = list(as_batches(Samples(x, y)))
    assert [len(b[1]) for b in chunks] == [DATASET_CHUNK, DATASET_CHUNK, 77]
    X = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(hessian(model, F.mse_loss, Samples(x, y)), 2 * X.T @ X / n, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(hessian(model, F.mse_loss, TensorDataset(x, y)), 2 * X.T @ X / n, rtol=1e-12,
                               atol=1e-13)


def test_batch_size_of():
    x, y = torch.zeros(5, 3), torch.zeros(5)
    assert batch_size_of((x, y)) == 5
    assert batch_size_of({"a": torch.zeros(4, 2), "b": torch.zeros(4), "s": "text"}) == 4
    assert batch_size_of((torch.zeros(6, 1), torch.zeros(6), torch.tensor(1.0))) == 6  # 0-d: not per sample
    with pytest.raises(DataError, match="disagree on the number of samples.*\\[3, 4\\]"):
        batch_size_of({"a": torch.zeros(4, 2), "b": torch.zeros(3)})
    with pytest.raises(DataError, match="inputs hold 5 samples and its targets 4"):
        batch_size_of((x, y[:4]))
    with pytest.raises(DataError, match="no tensor with a leading"):
        batch_size_of({"a": "text"})


class TestSumReduction:
    def test_a_loss_module_with_reduction_sum_or_none(self, small_mlp_problem):
        model, x, y = small_mlp_problem
        with pytest.raises(ConfigError, match="CrossEntropyLoss\\(reduction='sum'\\), not a mean over the batch.*"
                                              "use reduction='mean' or divide by the batch size"):
            hvp(model, nn.CrossEntropyLoss(reduction="sum"), (x, y), torch.zeros(57, dtype=torch.float64))
        with pytest.raises(ConfigError, match="reduction='none'"):
            gradient(model, nn.CrossEntropyLoss(reduction="none"), (x, y))

    @pytest.mark.parametrize("scale", [1.0, 0.01])
    def test_a_plain_function_that_sums(self, small_mlp_problem, scale):
        model, x, y = small_mlp_problem
        with pytest.raises(ConfigError, match="loss_fn returns a sum over the batch \\(reduction='sum'\\?\\), not a"
                                              " mean.*use reduction='mean' or divide by the batch size"):
            hessian(model, lambda out, t: scale * F.cross_entropy(out, t, reduction="sum"), (x, y))

    def test_a_batch_loss_that_sums(self, small_mlp_problem):
        model, x, y = small_mlp_problem
        with pytest.raises(ConfigError, match="batch_loss returns a sum over the batch"):
            gradient(model, None, [{"x": x, "y": y}],
                     batch_loss=lambda m, b: F.cross_entropy(m(b["x"]), b["y"], reduction="sum"))

    def test_a_per_sample_loss_vector(self, small_mlp_problem):
        model, x, y = small_mlp_problem
        with pytest.raises(ConfigError, match="loss_fn returns a tensor of shape \\(40,\\), not a scalar mean"):
            gradient(model, lambda out, t: F.cross_entropy(out, t, reduction="none"), (x, y))

    def test_means_pass_even_with_a_constant_term_and_in_train_mode_with_batchnorm(self, small_mlp_problem):
        model, x, y = small_mlp_problem
        decay = lambda out, t: F.cross_entropy(out, t) + 0.1 * model[0].weight.square().sum()  # noqa: E731
        assert torch.isfinite(hessian(model, decay, (x, y))).all()
        assert torch.isfinite(gradient(model, F.mse_loss, (x, F.one_hot(y, 3).double()))).all()
        bn = nn.Sequential(nn.Linear(5, 6), tl.nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
        assert torch.isfinite(hessian(bn, F.cross_entropy, (x, y), mode="train")).all()

    def test_check_false_skips_it(self, small_mlp_problem):
        model, x, y = small_mlp_problem
        summed = nn.CrossEntropyLoss(reduction="sum")
        with analysis_mode(model, "eval"):
            op = HessianOperator(model, summed, (x, y), check=False)
            torch.testing.assert_close(op.gradient(), 40 * gradient(model, F.cross_entropy, (x, y)))


class TestNonFinite:
    @pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
    def test_non_finite_inputs_are_named(self, small_mlp_problem, value):
        model, x, y = small_mlp_problem
        x = x.clone()
        x[33, 4] = value
        with pytest.raises(DataError, match=rf"non-finite value \({value}\) in x of batch 2, sample 1 \(sample 33"):
            gradient(model, F.cross_entropy, DataLoader(TensorDataset(x, y), batch_size=16))

    def test_non_finite_targets_and_dict_fields_are_named(self, small_mlp_problem):
        model, x, _ = small_mlp_problem
        t = torch.randn(40, 3, dtype=torch.float64)
        t[5, 0] = float("nan")
        with pytest.raises(DataError, match=r"in y of batch 0, sample 5"):
            gradient(model, F.mse_loss, (x, t))
        with pytest.raises(DataError, match=r"in batch\['t'\] of batch 0, sample 5"):
            gradient(model, None, {"x": x, "t": t}, batch_loss=lambda m, b: F.mse_loss(m(b["x"]), b["t"]))

    def test_a_non_finite_parameter_is_named(self, small_mlp_problem):
        model, x, y = small_mlp_problem
        with torch.no_grad():
            model[2].weight[0, 0] = float("inf")
        with pytest.raises(DataError, match=r"loss on batch 0 is (nan|inf) at the analysed point: parameter"
                                            r" '2.weight'"):
            hvp(model, F.cross_entropy, (x, y), torch.zeros(57, dtype=torch.float64))

    def test_a_loss_that_overflows(self, small_mlp_problem):
        model, x, y = small_mlp_problem
        with pytest.raises(DataError, match=r"loss on batch 1 is inf .*the model or the loss overflows"):
            gradient(model, lambda out, t: F.cross_entropy(out, t) / (len(t) != 10),
                     [(x[:30], y[:30]), (x[30:], y[30:])])


class TestMaxSamples:
    def test_only_the_first_samples_are_used(self, small_mlp_problem):
        model, x, y = small_mlp_problem
        loader = DataLoader(TensorDataset(x, y), batch_size=10)
        g_ref, hvp_ref = reference(model, x[:25], y[:25])
        torch.testing.assert_close(gradient(model, F.cross_entropy, loader, max_samples=25), g_ref, rtol=1e-12,
                                   atol=1e-14)
        v = torch.ones(57, dtype=torch.float64)
        torch.testing.assert_close(hvp(model, F.cross_entropy, (x, y), v, max_samples=25), hvp_ref(v), rtol=1e-11,
                                   atol=1e-13)
        torch.testing.assert_close(gradient(model, F.cross_entropy, TensorDataset(x, y), max_samples=25), g_ref,
                                   rtol=1e-12, atol=1e-14)

    def test_later_batches_are_never_read(self, small_mlp_problem):
        model, x, y = small_mlp_problem

        def batches():
            yield x[:20], y[:20]
            yield x[20:], y[20:]
            raise AssertionError("read past max_samples")

        torch.testing.assert_close(gradient(model, F.cross_entropy, batches(), max_samples=40),
                                   reference(model, x, y)[0], rtol=1e-12, atol=1e-14)

    @pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
    def test_bad_values(self, small_mlp_problem, bad):
        model, x, y = small_mlp_problem
        with pytest.raises(ConfigError, match="max_samples="):
            gradient(model, F.cross_entropy, (x, y), max_samples=bad)


def cnn(batch_norm: bool) -> nn.Module:
    return tl.nn.small_cnn(in_channels=1, image_size=8, num_classes=3, channels=(3, 4), batch_norm=batch_norm,
                           seed=0).double()


class TestStreaming:
    """Kept graph, streamed batches and chunked batches give the same numbers."""

    def operators(self, model, data, mode="eval"):
        with analysis_mode(model, mode):
            # the graph of 5 samples, fitted (a budget of 1 byte: the one-slice bound never fits)
            five = HessianOperator(model, tl.nn.cross_entropy, data, max_graph_bytes=1)._graph_size.bytes(5)
            kept = HessianOperator(model, tl.nn.cross_entropy, data, keep_graph=True)
            streamed = HessianOperator(model, tl.nn.cross_entropy, data, keep_graph=False)
            chunked = HessianOperator(model, tl.nn.cross_entropy, data, max_graph_bytes=five)
            assert not chunked.keep_graph and len(chunked.pieces) > len(chunked.batches)
            V = torch.randn(3, kept.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            return [(op.matmat(V), op.gradient(), op.loss, op.total_loss()) for op in (kept, streamed, chunked)]

    @pytest.mark.parametrize("batch_norm", [False, True])
    def test_a_cnn_in_eval_mode(self, batch_norm):
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(37, 1, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 3, (37,), generator=gen)
        model = cnn(batch_norm)
        if batch_norm:
            with torch.no_grad():
                model.train()(x * 3 + 1)
        (hk, gk, lk, tk), *others = self.operators(model, [(x[:30], y[:30]), (x[30:], y[30:])])
        for h, g, loss, total in others:
            torch.testing.assert_close(h, hk, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(g, gk, rtol=1e-10, atol=1e-12)
            assert loss == pytest.approx(lk, rel=1e-12) and total == pytest.approx(tk, rel=1e-12)

    def test_train_mode_without_batchnorm_may_chunk(self, small_mlp_problem):
        model, x, y = small_mlp_problem
        (hk, gk, _, _), *others = self.operators(model, (x, y), mode="train")
        for h, g, _, _ in others:
            torch.testing.assert_close(h, hk, rtol=1e-10, atol=1e-12)

    def test_train_mode_with_batchnorm_refuses_to_chunk(self):
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(40, 1, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 3, (40,), generator=gen)
        model = cnn(True)
        with analysis_mode(model, "train"):  # train mode's graph: batch statistics keep more
            small = HessianOperator(model, tl.nn.cross_entropy, (x, y))._graph_size.bytes(10)
        with pytest.raises(ConfigError, match="batch 0 of 40 samples needs an autograd graph.*above max_graph_bytes"
                                              ".*mode='train'.*BatchNorm.*smaller batches.*mode='eval'"):
            hvp(model, tl.nn.cross_entropy, (x, y), torch.zeros(sum(p.numel() for p in model.parameters()),
                                                                 dtype=torch.float64),
                mode="train", max_graph_bytes=small)
        v = torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
        loader = DataLoader(TensorDataset(x, y), batch_size=8)  # batches that fit: no chunking needed
        torch.testing.assert_close(hvp(model, tl.nn.cross_entropy, loader, v, mode="train", max_graph_bytes=small),
                                   hvp(model, tl.nn.cross_entropy, loader, v, mode="train"), rtol=1e-10, atol=1e-12)

    def test_the_measured_graph_grows_linearly_and_decides_keeping(self):
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(400, 1, 8, 8, generator=gen), torch.randint(0, 3, (400,), generator=gen)
        model = tl.nn.small_cnn(in_channels=1, image_size=8, num_classes=3, channels=(3, 4), seed=0)
        with analysis_mode(model, "eval"):
            small = HessianOperator(model, tl.nn.cross_entropy, (x[:100], y[:100]))
            large = HessianOperator(model, tl.nn.cross_entropy, (x, y))
            assert small.keep_graph and large.keep_graph
            assert large.graph_bytes == pytest.approx(4 * small.graph_bytes, rel=0.05)
            assert large.peak_bytes == pytest.approx(4 * small.peak_bytes, rel=0.05)
            assert large.graph_bytes < large.peak_bytes < 4 * large.graph_bytes  # a product needs room beside it
            # at least the first convolution's output (ReLU keeps it) and its pooling indices per sample
            assert small.graph_bytes >= 100 * 3 * 8 * 8 * (4 + 8 / 4)
            tight = HessianOperator(model, tl.nn.cross_entropy, (x, y), max_graph_bytes=large.graph_bytes // 3)
            assert not tight.keep_graph and len(tight.pieces) >= 3

    def test_the_one_slice_bound_decides_only_when_it_fits(self):
        """A graph that fits is decided on one probed slice, whose bound lies above the two-slice fit
        at every batch size; a budget the bound exceeds gets the fit (also from a model measured
        before), and chunks exactly as a fresh measurement does."""
        from trainlab.curvature import operator as op_module

        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(200, 1, 8, 8, generator=gen), torch.randint(0, 3, (200,), generator=gen)
        model = tl.nn.small_cnn(in_channels=1, image_size=8, num_classes=3, channels=(3, 4), seed=0)
        twin = tl.nn.small_cnn(in_channels=1, image_size=8, num_classes=3, channels=(3, 4), seed=0)
        with analysis_mode(model, "eval"), analysis_mode(twin, "eval"):
            roomy = HessianOperator(model, tl.nn.cross_entropy, (x, y))
            assert roomy.keep_graph and not roomy._graph_size.fitted
            fitted = HessianOperator(twin, tl.nn.cross_entropy, (x, y), max_graph_bytes=1)._graph_size
            assert fitted.fitted and fitted.probed == roomy._graph_size.probed  # the same first slice
            for n in (1, 7, 16, 31, 32, 33, 100, 1000):
                assert roomy._graph_size.bytes(n) >= fitted.bytes(n) * (1 - 1e-12)
                assert roomy._graph_size.graph(n) >= fitted.graph(n) * (1 - 1e-12)
            budget = fitted.bytes(50)  # the bound of 200 samples is above it: chunks of about 50
            tight = HessianOperator(model, tl.nn.cross_entropy, (x, y), max_graph_bytes=budget)
            fresh = HessianOperator(twin, tl.nn.cross_entropy, (x, y), max_graph_bytes=budget)
            assert tight._graph_size.fitted and not tight.keep_graph
            assert [p[1] for p in tight.pieces] == [p[1] for p in fresh.pieces] and len(tight.pieces) >= 4
            assert op_module._GRAPH_SIZES[model][next(iter(op_module._GRAPH_SIZES[model]))].fitted  # kept, refined

    @pytest.mark.parametrize("bad", [0, -5, float("nan"), "1GB", True])
    def test_bad_budgets(self, small_mlp_problem, bad):
        model, x, y = small_mlp_problem
        with pytest.raises(ConfigError, match="max_graph_bytes="):
            gradient(model, F.cross_entropy, (x, y), max_graph_bytes=bad)


PEAK = textwrap.dedent("""
    import resource, sys, torch, trainlab as tl
    from trainlab.curvature import hvp
    torch.set_num_threads(1)
    n, budget = int(sys.argv[1]), float(sys.argv[2])
    model = tl.nn.small_cnn(in_channels=3, image_size=32, num_classes=10, channels=(8, 16), seed=0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    hvp(model, tl.nn.cross_entropy, (x[:4], y[:4]), torch.ones(11642))  # load the kernels before the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hvp(model, tl.nn.cross_entropy, (x, y), torch.ones(11642), max_graph_bytes=budget)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
""")


def test_memory_of_a_cnn_product_stays_flat_as_the_samples_grow():
    """Peak RSS above the baseline of one HVP on an 11.6k-parameter CNN, 3×32×32 inputs: with
    a 32 MiB graph budget, 500 and 3,000 samples peak alike (within the allocator's slack);
    with the whole graph kept, 3,000 samples take several times more."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def peak(n, budget):
        out = subprocess.run([sys.executable, "-c", PEAK, str(n), str(budget)], capture_output=True, text=True,
                             env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        return float(out.stdout.split()[-1])

    small, large = peak(500, 32 * 2**20), peak(3000, 32 * 2**20)
    kept_large = peak(3000, 2**40)
    assert large < small + 100 and large < 250, (small, large)
    assert kept_large > 3 * large, (large, kept_large)
