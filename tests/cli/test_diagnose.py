"""``trainlab diagnose``: a run directory, and a model trained elsewhere (``--model``); every bad
input is one line on stderr, exit 2, no traceback, and no file changed."""

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
import torch

from trainlab.cli import main

from cli_checks import error_line
from digests import tree_digest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
HEAVY = ("sklearn", "scipy", "matplotlib", "mnist1d", "trainlab.experiments", "trainlab.report")

FACTORIES = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))

def two_outputs():
    return nn.Sequential(nn.Linear(4, 2))

def needs_args(width):
    return nn.Linear(4, width)

def broken():
    raise ValueError("no GPU here\\n(second line)")

def not_a_module():
    return {"weights": 1}

def frozen():
    m = nn.Linear(4, 3)
    m.requires_grad_(False)
    return m

def wide():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 300), nn.Tanh(), nn.Linear(300, 3))  # 2,403 parameters: Lanczos

NOT_CALLABLE = 3
"""


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's folder: a factory module (a fresh name, so no test sees another's import),
    its trained weights and a collection of bad files; the tests run inside it."""
    name = f"usernet_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FACTORIES)
    (tmp_path / f"broken_{name}.py").write_text("import torch\ndef build(:\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # diagnose adds the current directory
    sys.path.insert(0, str(tmp_path))
    module = __import__(name)
    sys.path.pop(0)
    model = module.build()
    state = model.state_dict()
    torch.save(state, tmp_path / "weights.pt")
    torch.save({"model": state, "epoch": 3}, tmp_path / "checkpoint.pt")
    torch.save(model, tmp_path / "whole_model.pt")
    torch.save([1, 2, 3], tmp_path / "a_list.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("not a tensor file")
    data = (tmp_path / "weights.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({**state, "0.weight": torch.zeros(6, 5)}, tmp_path / "wrong_shape.pt")
    torch.save({k: v for k, v in state.items() if k != "2.bias"}, tmp_path / "missing_key.pt")
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra_key.pt")
    nan = {k: v.clone() for k, v in state.items()}
    nan["2.weight"][0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    torch.save({"0.weight": torch.zeros(2, 4), "0.bias": torch.zeros(2)}, tmp_path / "two.pt")
    (tmp_path / "a_folder.pt").mkdir()
    return name


def bad_cases():
    own = ["--weights", "weights.pt", "--data", "iris"]
    return [
        ([], "nothing to diagnose"),
        (["somewhere", "--model", "{m}:build"], "give either RUN_DIR_OR_CHECKPOINT"),
        (["--model", "{m}:build", "--weights", "weights.pt"], "--data is missing"),
        (["--model", "{m}", *own], "expected MODULE:FACTORY"),
        (["--model", ":build", *own], "expected MODULE:FACTORY"),
        (["--model", "no_such_module_xyz:build", *own], "no module named 'no_such_module_xyz'"),
        (["--model", "{m}.py:build", *own], "not a file path; run from the folder that holds {m}.py and give"
                                            " --model {m}:build"),
        (["--model", "sub/{m}:build", *own], "not a file path"),
        (["--model", "broken_{m}:build", *own], "importing 'broken_{m}' failed: SyntaxError"),
        (["--model", "{m}:nope", *own], "has no attribute 'nope'"),
        (["--model", "{m}:NOT_CALLABLE", *own], "'NOT_CALLABLE' is of type int, not a callable"),
        (["--model", "{m}:needs_args", *own], "calling needs_args() failed: TypeError"),
        (["--model", "{m}:broken", *own], "calling broken() failed: ValueError: no GPU here (second line)"),
        (["--model", "{m}:not_a_module", *own], "returned an object of type dict, not a torch.nn.Module"),
        (["--model", "{m}:frozen", *own], "no trainable parameters"),
        (["--model", "{m}:build", "--weights", "absent.pt", "--data", "iris"], "'absent.pt': no such file"),
        (["--model", "{m}:build", "--weights", "a_folder.pt", "--data", "iris"], "is a directory"),
        (["--model", "{m}:build", "--weights", "empty.pt", "--data", "iris"], "is empty (0 bytes)"),
        (["--model", "{m}:build", "--weights", "text.pt", "--data", "iris"], "cannot be read by torch.load"),
        (["--model", "{m}:build", "--weights", "truncated.pt", "--data", "iris"], "cannot be read by torch.load"),
        (["--model", "{m}:build", "--weights", "whole_model.pt", "--data", "iris"], "save model.state_dict()"),
        (["--model", "{m}:build", "--weights", "a_list.pt", "--data", "iris"], "object of type list, not a state_dict"),
        (["--model", "{m}:build", "--weights", "wrong_shape.pt", "--data", "iris"],
         "'0.weight' has shape (6, 5) in the file, (6, 4) in the model"),
        (["--model", "{m}:build", "--weights", "missing_key.pt", "--data", "iris"], "missing key '2.bias'"),
        (["--model", "{m}:build", "--weights", "extra_key.pt", "--data", "iris"], "unexpected key 'extra.weight'"),
        (["--model", "{m}:build", "--weights", "nan.pt", "--data", "iris"],
         "holds non-finite weights in 2.weight; it is not a usable point to analyse"),
        (["--model", "{m}:build", "--weights", "weights.pt", "--data", "digits"],
         "shape (64,) per sample (batch (2, 64)), and the forward pass failed"),
        (["--model", "{m}:two_outputs", "--weights", "two.pt", "--data", "iris"], "at least 3 classes"),
        (["--model", "{m}:build", "--weights", "weights.pt", "--data", "no_such_set"], "unknown data set"),
        (["--model", "{m}:build", "--weights", "weights.pt", "--data", "absent.npz"], "absent.npz"),
        (["--model", "{m}:build", *own, "--k", "0"], "--k 0 is not allowed"),
        (["--model", "{m}:build", *own, "--max-hvp", "0"], "--max-hvp 0 is not allowed"),
        (["--model", "{m}:build", *own, "--max-samples", "-1"], "--max-samples -1 is not allowed"),
        # issue 23, item 2: the loss named as a function (more in test_diagnose_any_model.py)
        (["--model", "{m}:build", *own, "--loss", "mse", "--batch-loss", "{m}:build"], "give either --loss mse"),
        (["--model", "{m}:build", *own, "--batch-loss", "{m}:build", "--operator", "fisher"],
         "--operator fisher needs --loss, not --batch-loss"),
        (["--model", "{m}:build", *own, "--loss", "{m}:NOT_CALLABLE"], "not a callable (outputs, targets) -> mean loss"),
        (["--model", "{m}:build", *own, "--batch-loss", "{m}:build"], "calling build(model, batch) on the first batch"
                                                                     " of iris failed: TypeError"),
        (["--model", "{m}:build", "--weights", "weights.pt", "--data", "weights.pt"],
         "--data 'weights.pt' holds a dict of tensors (keys '0.weight', '0.bias', '2.weight', '2.bias'), which only"
         " a --batch-loss MODULE:FUNCTION can read"),
        (["somewhere", "--batch-loss", "{m}:build"], "give either RUN_DIR_OR_CHECKPOINT"),
    ]


@pytest.mark.parametrize("args, fragment", bad_cases())
def test_bad_input_is_one_line_exit_2_and_changes_nothing(user, tmp_path, capsys, args, fragment):
    before = tree_digest(tmp_path)
    code = main(["diagnose", *[a.format(m=user) for a in args]])
    assert fragment.format(m=user) in error_line(capsys, code)
    assert tree_digest(tmp_path) == before


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_model_from_a_factory_gives_the_direct_analysis(user, tmp_path):
    """In a fresh process, from the user's folder: same verdict, λ_max, λ_min and counts as
    ``curvature.diagnose`` called directly on the same model and training split."""
    import trainlab as tl

    module = sys.modules[user]
    model = module.build()
    train, _ = tl.data.load("iris")  # what --data iris means: training split, standardised
    x, y = train.tensors
    _train(model, x, y)
    torch.save({"model": model.state_dict(), "optimizer": {}}, tmp_path / "trained.pt")
    before = tree_digest(tmp_path)
    result = subprocess.run([sys.executable, "-m", "trainlab", "diagnose", "--model", f"{user}:build", "--weights",
                             "trained.pt", "--data", "iris", "--no-progress"],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    direct = tl.diagnose(model, tl.nn.cross_entropy, (x, y), k=20, progress=False)
    printed = result.stdout
    assert f"verdict: {direct.verdict.replace('_', ' ')}" in printed
    assert f"λ_max {float(direct.eigenvalues[0]):.4g}, λ_min {float(direct.eigenvalues[-1]):.4g}" in printed
    assert f"{direct.n_positive:,.0f} positive, {direct.n_negative:,.0f} negative" in printed
    assert f"loss {direct.loss:.6g}" in printed
    assert f"training split ({len(y):,} samples, standardised)" in printed
    assert tree_digest(tmp_path) == before  # no figure without --out, no __pycache__ in the user's folder

    # saved from a DistributedDataParallel wrapper: every key prefixed with "module."
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pt")
    wrapped = subprocess.run([sys.executable, "-m", "trainlab", "diagnose", "--model", f"{user}:build", "--weights",
                              "ddp.pt", "--data", "iris", "--no-progress"],
                             cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert wrapped.returncode == 0 and "'module.' prefix" in wrapped.stdout
    same = [line for line in printed.splitlines()[1:] if "cost:" not in line]  # all but the seconds
    assert [line for line in wrapped.stdout.splitlines()[2:] if "cost:" not in line] == same


def test_model_options_reach_the_analysis(user, tmp_path, capsys):
    """--max-samples analyses the first N samples, --loss mse the squared error to one-hot
    targets, --out draws the figure."""
    base = ["diagnose", "--model", f"{user}:build", "--weights", "weights.pt", "--data", "iris", "--no-progress"]
    assert main([*base, "--max-samples", "10", "--loss", "mse", "--out", "fig.png"]) == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "mse" in printed
    assert "training split (the first 10 of its 120 samples, standardised)" in printed  # what is analysed
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    import trainlab as tl

    model = sys.modules[user].build()
    x, y = tl.data.load("iris")[0].tensors
    direct = tl.diagnose(model, tl.nn.mse_onehot, (x[:10], y[:10]), progress=False)
    assert f"loss {direct.loss:.6g}" in printed


def test_k_is_clamped_and_max_hvp_bounds_the_cost(user, tmp_path, capsys):
    torch.save(sys.modules[user].wide().state_dict(), tmp_path / "wide.pt")
    assert main(["diagnose", "--model", f"{user}:wide", "--weights", "wide.pt", "--data", "iris", "--k", "5000",
                 "--max-hvp", "120", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Lanczos" in printed and "k=5,000 clamped to 1,202" in printed and "max_hvp=" in printed
    n_hvp = int(printed.split("cost: ")[1].split(" Hessian-vector")[0])
    assert n_hvp <= 120
    # the Lanczos path prints what it knows (Ritz values beyond the flat band, the density's bounds), not counts
    assert "eigenvalues (of 2,403): Lanczos found" in printed and "the density puts" in printed


def test_run_directory_then_checkpoint_faults(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--set", "data.name=iris", "--set", "train.epochs=2", "--set", "model.hidden=[4]",
                 "--out", str(out), "--doctor", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["events"] == []  # a healthy run: no event
    capsys.readouterr()
    assert main(["diagnose", str(out), "--density", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "minimum ratio" in printed and "gradient norm" in printed
    assert (out / "spectrum.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["diagnose", str(out / "checkpoint.pt"), "--out", str(tmp_path / "s.png"), "--no-progress"]) == 0
    assert (tmp_path / "s.png").exists()

    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    name = next(k for k, v in saved["model"].items() if v.is_floating_point() and k.endswith("weight"))
    saved["model"][name] = torch.full_like(saved["model"][name], float("inf"))
    torch.save(saved, out / "checkpoint.pt")
    good = (tmp_path / "s.png").read_bytes()
    data = (out / "checkpoint.pt").read_bytes()
    for content, fragment in ((data, f"holds non-finite weights in {name}; it is not a usable point to analyse"),
                              (data[:100], "cannot be read by torch.load"), (b"", "is empty (0 bytes)"),
                              (b"not a checkpoint", "cannot be read by torch.load")):
        (out / "checkpoint.pt").write_bytes(content)
        before = tree_digest(tmp_path)
        code = main(["diagnose", str(out), "--out", str(tmp_path / "s.png")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and fragment in err[0], err
        assert tree_digest(tmp_path) == before and (tmp_path / "s.png").read_bytes() == good


def test_diagnose_bad_path_is_exit_2(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a run directory or checkpoint" in err[0]


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "trainlab", "diagnose", "--model", "nowhere:build", "--weights",
                             "w.pt", "--data", "iris"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "trainlab diagnose: error: --model 'nowhere:build': no module named 'nowhere' in the current directory or on"
        " sys.path"]
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_imports_no_heavy_package():
    """Building the parser (``trainlab --help``) loads neither scikit-learn, SciPy, matplotlib
    nor the experiments; ``import trainlab`` loads no submodule at all."""
    probe = textwrap.dedent(f"""
        import sys
        import trainlab
        assert [m for m in sys.modules if m.startswith("trainlab.")] == ["trainlab.errors"], sys.modules
        import trainlab.cli
        trainlab.cli.parser()
        print(" ".join(m for m in {HEAVY!r} if m in sys.modules))
        """)
    result = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_lazy_public_names_and_experiment_names():
    import trainlab as tl
    from trainlab.cli.demo import EXPERIMENT_NAMES
    from trainlab.experiments import EXPERIMENTS

    assert tl.diagnose is tl.curvature.diagnose and tl.escape is tl.curvature.escape
    assert {"curvature", "data", "distributed", "errors", "nn", "optim", "train"} <= set(dir(tl))
    assert tl.train.Trainer and tl.optim.Adam and tl.data.load and tl.distributed.rank
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        tl.nope  # noqa: B018
    assert EXPERIMENT_NAMES == tuple(EXPERIMENTS)


# ------------------------------------------------------------------------------------------ --layers
def test_layers_prints_the_table_of_layerwise_and_draws_it_beside_out(user, tmp_path, capsys):
    """--layers: after the whole model's diagnosis, the rows ``layerwise`` gives called directly;
    the figure goes beside --out as STEM_layers.png; --groups and --no-couplings reach it."""
    import trainlab as tl
    from trainlab.curvature.layerwise import layerwise

    base = ["diagnose", "--model", f"{user}:build", "--weights", "weights.pt", "--data", "iris", "--no-progress"]
    assert main([*base, "--layers", "--out", "fig.png"]) == 0
    printed = capsys.readouterr().out
    model = sys.modules[user].build()
    x, y = tl.data.load("iris")[0].tensors
    direct = layerwise(model, tl.nn.cross_entropy, (x, y), progress=False)
    assert [r.name for r in direct.rows] == ["0", "0 + 2", "2"]
    assert printed.index("verdict:") < printed.index("Hessian blocks by layer: 2 groups, 1 coupling(s)")
    assert str(direct).splitlines()[1:] == printed.split("Hessian blocks by layer")[1].splitlines()[1:-2]
    assert printed.splitlines()[-2:] == ["wrote fig.png", "wrote fig_layers.png"]
    assert (tmp_path / "fig_layers.png").read_bytes()[:4] == b"\x89PNG"

    before = tree_digest(tmp_path)
    assert main([*base, "--layers", "--groups", "0, 2.weight", "--no-couplings"]) == 0
    table = capsys.readouterr().out.split("Hessian blocks by layer: 2 groups;")[1].splitlines()
    assert [line.split()[0] for line in table[2:4]] == ["0", "2.weight"] and table[4] == "  no block is a saddle"
    assert tree_digest(tmp_path) == before  # with --model and no --out: no figure


@pytest.mark.parametrize("args, fragment", [
    (["--groups", "0"], "--groups 0 goes with --layers, which is not given"),
    (["--no-couplings"], "--no-couplings goes with --layers"),
    (["--groups", "0", "--no-couplings"], "--groups 0 and --no-couplings go with --layers"),
    (["--layers", "--groups", " , "], "--groups ' , ' names no group"),
    (["--layers", "--groups", "0,nope"], "group 'nope': params names 'nope', which is neither a parameter nor"),
])
def test_layers_bad_combinations_are_one_line_exit_2(user, tmp_path, capsys, args, fragment):
    before = tree_digest(tmp_path)
    code = main(["diagnose", "--model", f"{user}:build", "--weights", "weights.pt", "--data", "iris", "--out",
                 "fig.png", *args])
    assert fragment in error_line(capsys, code)
    assert tree_digest(tmp_path) == before


def test_layers_of_a_run_in_a_real_process(tmp_path, capsys):
    """A run directory: the layer figure goes beside spectrum.png, as spectrum_layers.png."""
    out = tmp_path / "run"
    assert main(["train", "--set", "data.name=iris", "--set", "train.epochs=1", "--set", "model.hidden=[4]",
                 "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    result = subprocess.run([sys.executable, "-m", "trainlab", "diagnose", str(out), "--layers", "--no-progress"],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Hessian blocks by layer: "))
    assert lines[head + 1].split()[:4] == ["block", "params", "λ_max", "λ_min"]
    assert lines[-1] == f"wrote {out / 'spectrum_layers.png'}"
    assert (out / "spectrum_layers.png").read_bytes()[:4] == b"\x89PNG" and (out / "spectrum.png").exists()
    assert result.stderr == ""  # no progress bar, no warning


@pytest.mark.parametrize("n, max_samples, text", [
    (1438, None, "1,438 samples"),
    (1438, 256, "the first 256 of its 1,438 samples"),  # the header counts what is analysed (issue 23)
    (120, 120, "120 samples"),
    (120, 5000, "120 samples"),
])
def test_the_header_counts_the_samples_analysed(n, max_samples, text):
    from trainlab.cli.diagnose import _analysed

    assert _analysed(n, max_samples) == text
