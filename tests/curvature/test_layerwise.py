"""``layerwise``: one Hessian block per layer and per pair of neighbours — on a planted saddle
between two layers, against dense blocks of ``torch.func.hessian``, with every form of ``groups``."""

import json

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from torch import nn
from torch.func import functional_call, hessian

import trainlab as tl
from trainlab.curvature.layerwise import MAX_GROUPS, layer_groups, layerwise
from trainlab.errors import ConfigError
from trainlab.report import plots

from digests import model_digest

cross_entropy = nn.functional.cross_entropy


@pytest.fixture(scope="module")
def planted():
    """Digits, 64 → 8 → 8 → 8 → 10 with tanh, its middle hidden layer zero: the weights and biases of
    modules 2 (into it) and 4 (out of it) are 0, and the output bias is the log of the class
    frequencies, so the constant output is the loss's optimum and every gradient vanishes exactly.
    The lecture's ŷ = w₂w₁x at 0, one layer up: modules 2 and 4 together form a saddle (the
    cross term W₄ᵀ(mean rᵢ h₀ᵢᵀ) between them), each alone and every other block does not."""
    x, y = tl.data.load_digits()[0].tensors
    x, y = x[:200].double(), y[:200]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 10)).double()
    with torch.no_grad():
        for i in (2, 4):
            model[i].weight.zero_()
            model[i].bias.zero_()
        model[6].bias.copy_((torch.bincount(y, minlength=10).double() / len(y)).log())
    before = model_digest(model)
    result = layerwise(model, cross_entropy, (x, y), progress=False)
    assert model_digest(model) == before
    return model, x, y, result


def dense_block(model, x, y, names):
    """The Hessian of the loss in the parameters ``names`` alone, by ``torch.func.hessian``."""
    fixed = {k: v.detach() for k, v in model.named_parameters()}
    values = [fixed[n] for n in names]

    def loss(*chosen):
        return cross_entropy(functional_call(model, {**fixed, **dict(zip(names, chosen))}, (x,)), y)

    H = hessian(loss, argnums=tuple(range(len(names))))(*values)
    return torch.cat([torch.cat([H[i][j].reshape(values[i].numel(), values[j].numel()) for j in range(len(names))], 1)
                      for i in range(len(names))], 0)


def test_the_planted_saddle_is_the_coupling_of_the_zero_layers_neighbours(planted):
    model, x, y, result = planted
    assert [r.name for r in result.rows] == ["0", "0 + 2", "2", "2 + 4", "4", "4 + 6", "6"]
    assert [r.coupling for r in result.rows] == [False, True] * 3 + [False]
    assert result.saddles == ["2 + 4"]
    for r in result.rows:
        assert r.exact and r.certain and r.grad_norm < 1e-12, r
        if r.name != "2 + 4":
            assert r.verdict in ("degenerate", "local_minimum") and r.negative_share == 0, r
    saddle = result.row("2 + 4")
    assert saddle.lambda_min < -0.05 and saddle.lambda_max > 0.05 and saddle.negative_share > 0.3
    # the Gauss–Newton block has no negative eigenvalue: the saddle is the network's (R = H − G)
    assert saddle.ggn_lambda_min is not None and saddle.ggn_lambda_min >= -saddle.flat_threshold
    # the whole-model verdict agrees, but cannot say where: the table can
    assert tl.diagnose(model, cross_entropy, (x, y), progress=False).verdict == "saddle"
    # the independent reference: dense blocks of each single layer, and of the pair
    for r in result.rows:
        values = torch.linalg.eigvalsh(dense_block(model, x, y, r.params))
        negative = values < -r.flat_threshold
        assert bool(negative.any()) == (r.name == "2 + 4"), r.name


def test_rows_are_the_dense_hessian_blocks(small_mlp_problem):
    """λ_max, λ_min, trace and negative share of each row equal those of the dense block (1e-10)."""
    model, x, y = small_mlp_problem
    result = layerwise(model, cross_entropy, (x, y), progress=False)
    assert [r.name for r in result.rows] == ["0", "0 + 2", "2"]
    assert result.row("0 + 2").params == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert result.n_hvp == sum(r.n_hvp for r in result.rows)
    for r in result.rows:
        values = torch.linalg.eigvalsh(dense_block(model, x, y, r.params))
        assert r.n_params == len(values)
        assert r.lambda_max == pytest.approx(float(values[-1]), abs=1e-10)
        assert r.lambda_min == pytest.approx(float(values[0]), abs=1e-10)
        assert r.trace == pytest.approx(float(values.sum()), abs=1e-10)
        assert r.negative_share == float((values < -r.flat_threshold).double().mean())
        chosen = [dict(model.named_parameters())[n] for n in r.params]
        gradient = torch.autograd.grad(cross_entropy(model(x), y), chosen)
        assert r.grad_norm == pytest.approx(float(torch.cat([g.flatten() for g in gradient]).norm()), rel=1e-10)


def test_groups_as_a_dict_or_a_list_and_no_couplings(small_mlp_problem):
    model, x, y = small_mlp_problem
    named = layerwise(model, cross_entropy, (x, y), groups={"hidden": "0", "output": [model[2]]}, progress=False)
    assert [r.name for r in named.rows] == ["hidden", "hidden + output", "output"]
    assert named.row("hidden").params == ["0.weight", "0.bias"] and named.row("output").params == ["2.weight", "2.bias"]
    listed = layerwise(model, cross_entropy, (x, y), groups=["0", model[2].weight, [model[2].bias]], couplings=False,
                       progress=False)
    assert [r.name for r in listed.rows] == ["0", "2.weight", "2.bias"]
    assert not any(r.coupling for r in listed.rows) and [r.n_params for r in listed.rows] == [36, 18, 3]
    # a principal sub-block's eigenvalues interlace with the block's (Cauchy)
    assert listed.row("2.weight").lambda_max <= named.row("output").lambda_max + 1e-12
    assert listed.row("2.weight").lambda_min >= named.row("output").lambda_min - 1e-12
    with pytest.raises(KeyError, match="no row 'nope'; rows: 0, 2.weight, 2.bias"):
        listed.row("nope")
    ggn = layerwise(model, cross_entropy, (x, y), couplings=False, operator="ggn", progress=False)
    assert all(r.lambda_min >= -r.flat_threshold for r in ggn.rows)  # G ⪰ 0 in every block
    assert str(ggn).startswith("Gauss–Newton blocks by layer: 2 groups;")


def nested(blocks: int, depth: int) -> nn.Module:
    """Tiny Linear(2, 2) layers nested ``depth`` levels deep, ``blocks`` at each level."""
    if depth == 0:
        return nn.Linear(2, 2)
    return nn.Sequential(*[nested(blocks, depth - 1) for _ in range(blocks)])


def test_default_groups_merge_by_name_prefix_to_at_most_max_groups():
    model = nn.Sequential(*[nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)) for _ in range(9)])
    assert list(layer_groups(model)) == [str(i) for i in range(9)]  # 18 modules → 9 blocks
    assert layer_groups(model)["3"] == ["3.0.weight", "3.0.bias", "3.2.weight", "3.2.bias"]
    deep = nested(3, 3)  # 27 modules "a.b.c": depth 2 leaves 9 groups "a.b"
    assert list(layer_groups(deep)) == [f"{a}.{b}" for a in range(3) for b in range(3)]
    flat = nn.Sequential(*[nn.Linear(2, 2) for _ in range(40)])  # no prefix helps: runs of consecutive layers
    runs = layer_groups(flat)
    assert len(runs) <= MAX_GROUPS and list(runs)[:2] == ["0–2", "3–5"] and list(runs)[-1] == "39"
    assert sum(runs.values(), []) == [n for n, _ in flat.named_parameters()]
    small = nn.Sequential(*[nn.Linear(2, 2) for _ in range(MAX_GROUPS)])
    assert list(layer_groups(small)) == [str(i) for i in range(MAX_GROUPS)]  # at the limit: one per layer

    class Scaled(nn.Module):  # parameters on the model itself, beside a frozen layer
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(2))
            self.frozen = nn.Linear(2, 2).requires_grad_(False)
            self.head = nn.Linear(2, 2)

        def forward(self, x):
            return self.head(self.frozen(x) * self.scale)

    assert layer_groups(Scaled()) == {"(Scaled)": ["scale"], "head": ["head.weight", "head.bias"]}
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 2, generator=gen), torch.randint(0, 2, (16,), generator=gen)
    result = layerwise(model, cross_entropy, (x, y), progress=False)
    assert len(result.rows) == 2 * 9 - 1 and result.rows[1].name == "0 + 1"
    check_figure(result)


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(groups=["0", "nope"]), ConfigError, "group 'nope': params names 'nope', which is neither"),
    (dict(groups={}), ConfigError, "groups is empty"),
    (dict(groups=[]), ConfigError, "groups is empty"),
    (dict(groups="0"), ConfigError, "groups='0' is not allowed"),
    (dict(groups={"a": "0", "": "2"}), ConfigError, "group names are non-empty strings"),
    (dict(groups=["0", "0"]), ConfigError, "two groups are called '0'"),
    (dict(groups={"frozen": "1"}), ConfigError, "group 'frozen': params selects no parameter that requires"),
    (dict(couplings="yes"), ConfigError, "couplings='yes' is not allowed; expected True or False"),
    (dict(k=0), ConfigError, "k=0 is not allowed"),
    (dict(probes=1.5), ConfigError, "probes=1.5 is not allowed"),
    (dict(params="0"), ConfigError, "layerwise takes groups=, not params="),
    (dict(max_hvpp=10), TypeError, "unexpected keyword argument\\(s\\): max_hvpp"),
    (dict(method="exact"), ConfigError, "method='exact' is not allowed"),
])
def test_bad_input_is_one_sentence_and_changes_nothing(kwargs, error, fragment):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4).requires_grad_(False), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    before = model_digest(model)
    with pytest.raises(error, match=fragment):
        layerwise(model, cross_entropy, (x, y), progress=False, **kwargs)
    assert model_digest(model) == before


def test_the_table_fits_one_screen_and_the_figure_reads(planted):
    _, _, _, result = planted
    text = str(result)
    lines = text.splitlines()
    assert len(lines) <= 40 and max(len(line) for line in lines) <= 110, text
    assert lines[0].startswith("Hessian blocks by layer: 4 groups, 3 coupling(s); loss ")
    row = next(line for line in lines if line.strip().startswith("2 + 4"))
    assert row.startswith("    2 + 4") and row.split()[-1] == "saddle" and "0.1085" in row  # indented coupling
    assert "  saddle in: 2 + 4" in lines and "in: 2 + 4" in lines[lines.index("  saddle in: 2 + 4") + 2]
    assert repr(result) == text
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert [r["name"] for r in data["rows"]] == [r.name for r in result.rows] and data["operator"] == "hessian"

    check_figure(result)


def check_figure(result):
    """The figure explains what it draws (``plots.problems``), names the rows top to bottom as
    the table does (couplings in italics), and no label, title or legend overlaps another."""
    fig = plots.layerwise_figure(result)
    assert plots.problems(fig) == []
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    labels = sorted((t for t in ax.get_yticklabels() if t.get_text()), key=lambda t: -t.get_position()[1])
    assert [t.get_text() for t in labels] == [r.name for r in result.rows]
    assert [t.get_fontstyle() for t in labels] == ["italic" if r.coupling else "normal" for r in result.rows]
    boxes = [t.get_window_extent(renderer) for t in labels] + [ax.title.get_window_extent(renderer)]
    boxes.append(fig.legends[0].get_window_extent(renderer))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    assert not fig.legends[0].get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
