"""``trainlab diagnose --model … --data FILE.pt [--loss MODULE:FN | --batch-loss MODULE:FN]``:
any model, with the batches it takes (issue 23, item 2). Each analysis is compared with
``tl.diagnose`` called directly on the same model, batches and options; each bad input is one
line on stderr, exit 2, and no file changed."""

import math
import re
import sys
import uuid

import pytest
import torch

from trainlab.cli import main

from cli_checks import error_line
from digests import tree_digest

VOCAB = 10

MODULE = """
import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 10
T = 8


class GRULM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 4)
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(6, VOCAB)

    def forward(self, input_ids):
        h, _ = self.gru(self.embed(input_ids))
        return self.head(h)


class TransformerLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.pos = nn.Parameter(0.1 * torch.randn(T, 8))
        self.block = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, input_ids):
        t = input_ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, dtype=self.pos.dtype)
        return self.head(self.block(self.embed(input_ids) + self.pos[:t], src_mask=mask, is_causal=True))


def build():
    torch.manual_seed(0)
    return GRULM().double()


def build_transformer():
    torch.manual_seed(0)
    return TransformerLM().double()


def build_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def batch_loss(model, batch):
    logits = model(batch["input_ids"])
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"].reshape(-1))


def pair_batch_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def smoothed(outputs, targets):
    return F.cross_entropy(outputs, targets, label_smoothing=0.1)


def per_token(model, batch):
    logits = model(batch["input_ids"])
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"].reshape(-1), reduction="none")


def nan_loss(model, batch):
    return batch_loss(model, batch) * float("nan")


def raises(model, batch):
    return batch["tokens"]


def detached(model, batch):
    return batch_loss(model, batch).detach()


def as_float(model, batch):
    return batch_loss(model, batch).item()


def loss_raises(outputs, targets):
    raise RuntimeError("shapes do not match")


NOT_CALLABLE = 3
"""


@pytest.fixture
def lm(tmp_path, monkeypatch):
    """A user's folder: a module (a fresh name, so no test sees another's import) with language
    models and losses, their weights, batches of tokens as dicts and (x, y) pairs, and bad files."""
    name = f"lm_factory_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # diagnose adds the current directory
    sys.path.insert(0, str(tmp_path))
    module = __import__(name)
    sys.path.pop(0)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (3, 8, 9), generator=g)  # 3 batches of 8 sequences of 9 tokens
    batches = [{"input_ids": t[:, :-1], "labels": t[:, 1:]} for t in tokens]
    torch.save(module.build().state_dict(), tmp_path / "lm.pt")
    torch.save(module.build_transformer().state_dict(), tmp_path / "transformer.pt")
    torch.save(module.build_mlp().state_dict(), tmp_path / "mlp.pt")
    torch.save(batches, tmp_path / "batches.pt")
    torch.save(batches[0], tmp_path / "one_batch.pt")
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.arange(30) % 3
    torch.save((x, y), tmp_path / "pair.pt")
    torch.save([(x[:16], y[:16]), (x[16:], y[16:])], tmp_path / "pairs.pt")
    bad = {
        "string.pt": "hello", "empty_list.pt": [], "mixed.pt": [(x, y), batches[0]],
        "short_y.pt": (x, y[:-1]), "triple.pt": [(x, y, y)], "tensor.pt": x,
        "dict_of_lists.pt": {"input_ids": tokens[0], "n": 3}, "float_labels.pt": (x, y.double()),
        "label_too_large.pt": [(x[:16], y[:16]), (x[16:], y[16:] + 2)], "no_samples.pt": (x[:0], y[:0]),
        "nan_x.pt": (torch.where(torch.arange(30)[:, None] == 3, math.nan, x), y),
    }
    for file, content in bad.items():
        torch.save(content, tmp_path / file)
    torch.save(torch.utils.data.TensorDataset(x, y), tmp_path / "dataset.pt")
    (tmp_path / "zero_bytes.pt").write_bytes(b"")
    return module


def printed_eigenvalues(printed: str) -> dict[str, list[float]]:
    """The numbers the printout shows: λ_max, λ_min and the five largest and smallest eigenvalues."""
    extremes = re.search(r"λ_max (\S+?)(?: \S+)?, λ_min (\S+)", printed)
    lines = {key: re.search(rf"{key} eigenvalues: (.+)", printed).group(1) for key in ("largest", "smallest")}
    return {"extremes": [float(extremes.group(1)), float(extremes.group(2))],
            **{key: [float(v) for v in line.split(", ")] for key, line in lines.items()}}


def assert_same_eigenvalues(printed: str, direct) -> None:
    """The printout's eigenvalues are the direct call's, to the printed 4 significant digits
    (half a unit of the 4th digit) plus the float64 rounding of two runs of n-parameter products."""
    values = direct.eigenvalues.double()
    show = min(5, len(values))
    expected = {"extremes": [values[0], values[-1]], "largest": list(values[:show]), "smallest": list(values[-show:])}
    scale = float(values.abs().max())
    rounding = 100 * direct.n_params * torch.finfo(torch.float64).eps * scale
    for key, numbers in printed_eigenvalues(printed).items():
        assert len(numbers) == len(expected[key]), (key, numbers)
        for shown, exact in zip(numbers, expected[key]):
            exact = float(exact)
            digit = 0.5 * 10 ** (math.floor(math.log10(abs(exact))) - 3) if exact != 0 else 0.0
            assert abs(shown - exact) <= digit + rounding, (key, shown, exact)


def assert_same_verdict(printed: str, direct) -> None:
    assert f"verdict: {direct.verdict.replace('_', ' ')}" in printed.splitlines()[1]
    assert f"loss {direct.loss:.6g}, gradient norm {direct.grad_norm:.3g}" in printed


def run(capsys, *args: str) -> str:
    code = main(["diagnose", *args, "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


# ------------------------------------------------------------------------------------------ the must-show
def test_gru_lm_with_dict_batches_gives_the_direct_analysis(lm, tmp_path, capsys):
    """issue 23: the CLI diagnoses a GRU language model with dict batches through --batch-loss and
    gives the same verdict and eigenvalues as tl.diagnose called directly."""
    import trainlab as tl

    before = tree_digest(tmp_path)
    m = lm.__name__
    printed = run(capsys, "--model", f"{m}:build", "--weights", "lm.pt", "--data", "batches.pt", "--batch-loss",
                  f"{m}:batch_loss")
    model = lm.build()
    model.load_state_dict(torch.load(tmp_path / "lm.pt", weights_only=True))
    batches = torch.load(tmp_path / "batches.pt", weights_only=True)
    direct = tl.diagnose(model, None, batches, batch_loss=lm.batch_loss, k=20, progress=False)
    assert printed.splitlines()[0] == (f"{m}:build with lm.pt on batches.pt, 3 dict batches (24 samples, as saved),"
                                       f" batch loss {m}:batch_loss")
    assert direct.exact and f"Hessian ({direct.n_params:,} parameters, exact)" in printed
    assert_same_verdict(printed, direct)
    assert_same_eigenvalues(printed, direct)
    assert f"{direct.n_positive:,.0f} positive, {direct.n_negative:,.0f} negative" in printed
    assert tree_digest(tmp_path) == before  # nothing written without --out, no __pycache__


def test_transformer_lm_with_one_dict_batch_and_max_samples(lm, tmp_path, capsys):
    """A .pt holding one dict of tensors is one batch; --max-samples, --k and --max-hvp reach the
    analysis (the Lanczos path: the same seeds give the same eigenvalues)."""
    import trainlab as tl

    m = lm.__name__
    printed = run(capsys, "--model", f"{m}:build_transformer", "--weights", "transformer.pt", "--data", "one_batch.pt",
                  "--batch-loss", f"{m}:batch_loss", "--max-samples", "6", "--k", "3", "--max-hvp", "150")
    assert "one dict batch (the first 6 of its 8 samples, as saved)" in printed.splitlines()[0]
    model = lm.build_transformer()
    model.load_state_dict(torch.load(tmp_path / "transformer.pt", weights_only=True))
    batch = torch.load(tmp_path / "one_batch.pt", weights_only=True)
    direct = tl.diagnose(model, None, batch, batch_loss=lm.batch_loss, k=3, max_hvp=150, max_samples=6,
                         progress=False)
    assert direct.method == "lanczos" and "Lanczos" in printed
    assert_same_verdict(printed, direct)
    assert_same_eigenvalues(printed, direct)


def test_a_pair_with_a_loss_function_gives_the_direct_analysis(lm, tmp_path, capsys):
    """--data FILE.pt holding (x, y), --loss MODULE:FUNCTION: the data as saved, no split, no
    standardisation."""
    import trainlab as tl

    m = lm.__name__
    printed = run(capsys, "--model", f"{m}:build_mlp", "--weights", "mlp.pt", "--data", "pair.pt", "--loss",
                  f"{m}:smoothed")
    assert printed.splitlines()[0].endswith("on pair.pt, an (x, y) pair (30 samples, as saved), loss"
                                            f" {m}:smoothed")
    model = lm.build_mlp()
    x, y = torch.load(tmp_path / "pair.pt", weights_only=True)
    direct = tl.diagnose(model, lm.smoothed, (x, y), k=20, progress=False)
    assert_same_verdict(printed, direct)
    assert_same_eigenvalues(printed, direct)


@pytest.mark.parametrize("operator, title", [("ggn", "Gauss–Newton G"), ("fisher", "empirical Fisher")])
def test_operator_reaches_the_analysis(lm, tmp_path, capsys, operator, title):
    """--operator ggn|fisher on a list of (x, y) pairs: tl.diagnose(operator=...)'s eigenvalues."""
    import trainlab as tl

    m = lm.__name__
    printed = run(capsys, "--model", f"{m}:build_mlp", "--weights", "mlp.pt", "--data", "pairs.pt", "--operator",
                  operator)
    assert "2 (x, y) batches (30 samples, as saved), cross_entropy" in printed.splitlines()[0]
    batches = torch.load(tmp_path / "pairs.pt", weights_only=True)
    direct = tl.diagnose(lm.build_mlp(), tl.nn.cross_entropy, batches, k=20, operator=operator, progress=False)
    assert f"{title} ({direct.n_params:,} parameters, exact)" in printed
    assert_same_verdict(printed, direct)
    assert_same_eigenvalues(printed, direct)


def test_operator_on_a_bundled_set_and_a_run(lm, tmp_path, capsys):
    """--operator works with both ways of naming the model."""
    import trainlab as tl

    m = lm.__name__
    torch.save(lm.build_mlp().float().state_dict(), tmp_path / "mlp32.pt")
    printed = run(capsys, "--model", f"{m}:build_mlp", "--weights", "mlp.pt", "--data", "iris", "--operator", "ggn")
    x, y = tl.data.load("iris")[0].tensors
    direct = tl.diagnose(lm.build_mlp(), tl.nn.cross_entropy, (x.double(), y), k=20, operator="ggn", progress=False)
    assert_same_eigenvalues(printed, direct)
    out = tmp_path / "run"
    assert main(["train", "--set", "data.name=iris", "--set", "train.epochs=1", "--set", "model.hidden=[4]",
                 "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    printed = run(capsys, str(out), "--operator", "fisher")
    assert "empirical Fisher (" in printed and "Fisher-vector products" in printed


def test_batch_loss_takes_the_pairs_of_a_bundled_set(lm, capsys):
    import trainlab as tl

    m = lm.__name__
    printed = run(capsys, "--model", f"{m}:build_mlp", "--weights", "mlp.pt", "--data", "iris", "--batch-loss",
                  f"{m}:pair_batch_loss")
    assert printed.splitlines()[0].endswith(f"training split (120 samples, standardised), batch loss"
                                            f" {m}:pair_batch_loss")
    x, y = tl.data.load("iris")[0].tensors
    direct = tl.diagnose(lm.build_mlp(), tl.nn.cross_entropy, (x.double(), y), k=20, progress=False)
    assert_same_verdict(printed, direct)
    assert_same_eigenvalues(printed, direct)


def test_layers_with_a_batch_loss_print_the_direct_table(lm, tmp_path, capsys):
    from trainlab.curvature.layerwise import layerwise

    m = lm.__name__
    printed = run(capsys, "--model", f"{m}:build", "--weights", "lm.pt", "--data", "batches.pt", "--batch-loss",
                  f"{m}:batch_loss", "--layers", "--no-couplings", "--max-samples", "8")
    model = lm.build()
    batches = torch.load(tmp_path / "batches.pt", weights_only=True)
    direct = layerwise(model, None, batches, couplings=False, batch_loss=lm.batch_loss, max_samples=8,
                       progress=False)
    assert [r.name for r in direct.rows] == ["embed", "gru", "head"]
    assert str(direct).splitlines()[1:] == printed.split("Hessian blocks by layer")[1].splitlines()[1:]


def test_help_shows_a_language_model_example(capsys):
    with pytest.raises(SystemExit):
        main(["diagnose", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-loss lm:batch_loss" in text and "--operator {hessian,ggn,fisher}" in text


# ------------------------------------------------------------------------------------------ bad inputs
LM = ["--model", "{m}:build", "--weights", "lm.pt"]
MLP = ["--model", "{m}:build_mlp", "--weights", "mlp.pt"]
PAIR = [*MLP, "--data", "pair.pt"]
DICTS = [*LM, "--data", "batches.pt"]


@pytest.mark.parametrize("args, fragment", [
    ([*MLP, "--data", "string.pt"], "--data 'string.pt' holds a str; expected an (x, y) pair of tensors, a dict"),
    ([*MLP, "--data", "empty_list.pt"], "holds an empty list; expected"),
    ([*MLP, "--data", "tensor.pt"], "holds a single tensor of shape (30, 4), without targets"),
    ([*MLP, "--data", "triple.pt"], "holds a list whose batch 0 is a tuple of length 3"),
    ([*MLP, "--data", "dict_of_lists.pt", "--batch-loss", "{m}:batch_loss"],
     "holds a dict whose entry 'n' is of type int, not a tensor"),
    ([*MLP, "--data", "mixed.pt", "--batch-loss", "{m}:pair_batch_loss"],
     "holds a list mixing (x, y) pairs (batch 0) and dicts (batch 1); every batch must be of one form"),
    ([*LM, "--data", "batches.pt"], "holds a list of dicts of tensors (keys 'input_ids', 'labels'), which only a"
                                    " --batch-loss MODULE:FUNCTION can read"),
    ([*LM, "--data", "one_batch.pt", "--loss", "{m}:smoothed"], "holds a dict of tensors"),
    ([*MLP, "--data", "short_y.pt"], "holds tensors with different numbers of samples (x 30, y 29)"),
    ([*MLP, "--data", "no_samples.pt"], "holds no samples (leading dimension 0)"),
    ([*MLP, "--data", "nan_x.pt"], "--data 'nan_x.pt' holds nan in x at sample 3; every tensor of the data must be"
                                   " finite"),
    ([*MLP, "--data", "float_labels.pt"], "--loss cross_entropy needs integer class labels 0…C−1, one per sample,"
                                          " as y; --data 'float_labels.pt' holds y of dtype float64"),
    ([*MLP, "--data", "label_too_large.pt"], "at least 5 classes"),
    ([*MLP, "--data", "dataset.pt"], "holds a pickled torch.utils.data.dataset.TensorDataset, which"
                                     " torch.load(weights_only=True) refuses to run; save tensors only"),
    ([*MLP, "--data", "zero_bytes.pt"], "is empty (0 bytes); expected an (x, y) pair of tensors"),
    ([*MLP, "--data", "absent.pt"], "--data 'absent.pt': no such file"),
    ([*PAIR, "--no-standardize"], "--no-standardize does nothing with --data pair.pt"),
    ([*PAIR, "--loss", "mse", "--batch-loss", "{m}:pair_batch_loss"], "give either --loss mse"),
    ([*DICTS, "--batch-loss", "{m}:batch_loss", "--operator", "ggn"], "--operator ggn needs --loss, not --batch-loss"),
    ([*PAIR, "--loss", "nocolon"], "argument --loss: invalid choice: 'nocolon'"),
    ([*PAIR, "--loss", ":smoothed"], "--loss ':smoothed' is not allowed; expected MODULE:FUNCTION"),
    ([*PAIR, "--loss", "{m}.py:smoothed"], "not a file path; run from the folder that holds {m}.py and give --loss"
                                           " {m}:smoothed"),
    ([*PAIR, "--loss", "no_such_module_xyz:fn"], "--loss 'no_such_module_xyz:fn': no module named"
                                                 " 'no_such_module_xyz'"),
    ([*PAIR, "--loss", "{m}:nope"], "has no attribute 'nope'"),
    ([*PAIR, "--loss", "{m}:NOT_CALLABLE"], "'NOT_CALLABLE' is of type int, not a callable (outputs, targets) ->"
                                            " mean loss"),
    ([*PAIR, "--loss", "{m}:loss_raises"], "--loss '{m}:loss_raises': calling loss_raises(outputs, targets) on the"
                                           " model's output (30, 3) and the targets (30,) of the first batch of"
                                           " pair.pt failed: RuntimeError: shapes do not match"),
    ([*DICTS, "--batch-loss", "{m}:per_token"], "per_token(model, batch) returned a tensor of shape (64,), not one"
                                                " number"),
    ([*DICTS, "--batch-loss", "{m}:nan_loss"], "nan_loss(model, batch) returned nan on the first batch of"
                                               " batches.pt; expected the batch's mean loss, a finite real 0-d tensor"
                                               " that requires grad"),
    ([*DICTS, "--batch-loss", "{m}:detached"], "returned a tensor that does not require grad"),
    ([*DICTS, "--batch-loss", "{m}:as_float"], "returned a Python float"),
    ([*DICTS, "--batch-loss", "{m}:raises"], "calling raises(model, batch) on the first batch of batches.pt failed:"
                                             " KeyError: 'tokens'"),
    ([*DICTS, "--batch-loss", "{m}:NOT_CALLABLE"], "not a callable (model, batch) -> mean loss"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(lm, tmp_path, capsys, args, fragment):
    m = lm.__name__
    before = tree_digest(tmp_path)
    try:
        code = main(["diagnose", *[a.format(m=m) for a in args], "--no-progress"])
    except SystemExit as e:  # argparse's usage error
        code = e.code
    assert fragment.format(m=m) in error_line(capsys, code)
    assert tree_digest(tmp_path) == before


def test_the_num_classes_hint_names_what_this_command_takes(lm, tmp_path, capsys):
    """issue 23: a gap in the labels of a .npz said "set data.num_classes", an option of
    `trainlab train`'s config that `diagnose --model` does not have."""
    import numpy as np

    x = np.random.default_rng(0).normal(size=(40, 4))
    np.savez(tmp_path / "gap.npz", x=x, y=np.repeat([0, 1, 3, 3], 10))
    before = tree_digest(tmp_path)
    code = main(["diagnose", *[a.format(m=lm.__name__) for a in MLP], "--data", "gap.npz", "--no-progress"])
    line = error_line(capsys, code)
    assert "label 3 at sample 20 leaves class 2 empty" in line and "num_classes" not in line
    assert "save the data with torch.save as an (x, y) pair and give --data FILE.pt" in line
    assert tree_digest(tmp_path) == before
