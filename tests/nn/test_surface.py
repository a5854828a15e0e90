import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import trainlab as tl
from trainlab.nn.surface import filter_normalized_direction, slice2d


@pytest.fixture
def problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (50,), generator=gen)
    model = tl.nn.mlp(4, [5], 3, activation="tanh", seed=0).double()
    return model, x, y


def test_grid_values_equal_the_loss_at_those_parameters(problem):
    model, x, y = problem
    n = sum(p.numel() for p in model.parameters())
    d1, d2 = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    s = slice2d(model, tl.nn.cross_entropy, (x, y), directions=(d1, d2), span=((-1, 0.5), (0, 2)), steps=4)
    theta = torch.nn.utils.parameters_to_vector(model.parameters())
    for i, j in [(0, 0), (1, 3), (3, 2)]:
        probe = tl.nn.mlp(4, [5], 3, activation="tanh").double()
        torch.nn.utils.vector_to_parameters(theta + s.alphas[i].item() * d1 + s.betas[j].item() * d2,
                                            probe.parameters())
        expected = tl.nn.cross_entropy(probe(x), y).item()
        assert s.loss[i, j].item() == pytest.approx(expected, rel=1e-12)
    assert s.center == pytest.approx(tl.nn.cross_entropy(model(x), y).item(), rel=1e-12)
    assert s.alphas[0] == -1 and s.betas[-1] == 2


def test_parameters_and_mode_are_restored_exactly(problem):
    model, x, y = problem
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    slice2d(model, tl.nn.cross_entropy, (x, y), steps=3)
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_filter_normalised_directions(problem):
    model, _, _ = problem
    direction = filter_normalized_direction(model, torch.Generator().manual_seed(3))
    for d, p in zip(direction, model.parameters()):
        if p.dim() == 1:
            assert torch.equal(d, torch.zeros_like(p))  # biases are not perturbed
        else:
            torch.testing.assert_close(d.norm(dim=1), p.detach().norm(dim=1))


def test_batches_are_weighted_by_their_size(problem):
    model, x, y = problem
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # 16, 16, 16, 2
    a = slice2d(model, tl.nn.cross_entropy, loader, steps=3, seed=1)
    b = slice2d(model, tl.nn.cross_entropy, (x, y), steps=3, seed=1)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-12, atol=1e-12)


def test_mse_surface_is_flat_where_cross_entropy_slopes():
    """The lecture's picture on one model: confidently wrong logits; the same plane under both losses."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 3, generator=gen, dtype=torch.float64)
    x[:, 0] = torch.sign(x[:, 0]) * (1 + x[:, 0].abs())
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0, 0], model.weight[1, 0] = 10.0, -10.0
        model.bias.zero_()
    d1 = [torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    d2 = [torch.zeros(2, 3, dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)]
    ranges = dict(directions=(d1, d2), span=((-1, 1), (-1, 1)), steps=5)
    ce = slice2d(model, tl.nn.cross_entropy, (x, y), **ranges).loss
    mse = slice2d(model, tl.nn.mse_onehot, (x, y), **ranges).loss
    assert (ce.max() - ce.min()) > 1 and (mse.max() - mse.min()) < 0.01 * (ce.max() - ce.min())


def test_bad_directions_and_steps(problem):
    model, x, y = problem
    with pytest.raises(ValueError, match="directions\\[0\\] has 3 entries; the model has 43 parameters"):
        slice2d(model, tl.nn.cross_entropy, (x, y), directions=(torch.zeros(3), torch.zeros(43)))
    with pytest.raises(ValueError, match="steps=1"):
        slice2d(model, tl.nn.cross_entropy, (x, y), steps=1)
    with pytest.raises(tl.errors.DataError, match="an .inputs, targets. pair"):
        slice2d(model, tl.nn.cross_entropy, 5, steps=2)


def test_surface_figure_renders(problem, tmp_path):
    from trainlab.report import plots

    model, x, y = problem
    fig = plots.surface_figure(slice2d(model, tl.nn.cross_entropy, (x, y), steps=5))
    path = plots.save(fig, tmp_path / "s.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_an_endless_stream_is_refused_not_walked_forever():
    """An IterableDataset without a length, or an endless generator, is refused as the analyses
    refuse it (issue 21), with the model unchanged."""
    import itertools

    from torch.utils.data import IterableDataset

    from trainlab.errors import DataError

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]

    class Stream(IterableDataset):
        def __iter__(self):
            while True:
                yield torch.randn(3), torch.tensor(1)

    def endless():
        for _ in itertools.count():
            yield torch.randn(4, 3), torch.zeros(4, dtype=torch.long)

    for data, match in ((Stream(), "IterableDataset without a length"), (endless(), "without a length that yielded")):
        with pytest.raises(DataError, match=match):
            slice2d(model, torch.nn.functional.cross_entropy, data, steps=3)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
