"""No way in (issue 21, item 1): a file a user or a framework hands over never runs code, and
the current directory never shadows trainlab's own dependencies.

* **Crafted state files** beside an HF checkpoint (``checkpoint-N/trainlab_callback.pt``): a
  pickle whose ``__reduce__`` would run a command (it would create a marker file) is refused
  with one sentence naming the path, and the marker never appears; so is every other file that
  is not the callback's state (not a dict, wrong types, cut short, empty, a directory, a state
  of another model). The Lightning callback's state is checked the same way.
* **Import-path shadowing**: ``trainlab diagnose --model mymodel:build`` imports the user's
  module with the current directory on the import path only for that import, and behind the
  installed packages: a local ``tqdm.py``, ``sklearn.py``, ``numpy.py``, ``matplotlib.py`` or
  ``torch.py`` is never imported in place of the real one, and ``sys.path`` is as it was.
* **Plain states**: what the integrations save loads with ``torch.load(weights_only=True)``
  and loads back exactly.

Every refusal: the exception type (API) or exit status (CLI), one sentence naming the bad
value, and nothing changed (sha256 of every file, the model's digest, the callback's state).
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib  # noqa: F401 - imported before any case, so every case sees the same sys.modules
import pytest
import sklearn  # noqa: F401
import torch
import torch.nn.functional as F
from torch import nn

from digests import model_digest
from reliability.conftest import PYTHON, assert_one_line, assert_unchanged, refused, run_cli, subprocess_env, \
    tree_hash
from trainlab.errors import ConfigError
from trainlab.instruments import Monitor
from trainlab.instruments.gradients import GradNorm, UpdateRatio
from trainlab.instruments.monitor import Instrument
from trainlab.instruments.noise import GSNR, NoiseScale
from trainlab.instruments.sharpness import HessianTrace, Sharpness, Stability
from trainlab.instruments.units import Units
from trainlab.integrations import load_states, states
from trainlab.train import StallDoctor

# ---------------------------------------------------------------- a model, its callback state and digests


def small_model(seed: int = 0, hidden: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3))


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(24, 4, generator=g), torch.arange(24) % 3


def trained_parts(model: nn.Module, steps: int = 4, instruments=None) -> tuple[Monitor, StallDoctor]:
    """A Monitor and a doctor after ``steps`` SGD updates of ``model`` (a copy is trained: the
    state, not the model, is what the cases need)."""
    import copy

    model = copy.deepcopy(model)
    x, y = toy_data()
    monitor = Monitor(every=1, sample=16, progress=False, instruments=instruments or [
        GradNorm(), UpdateRatio(), Sharpness(every=2)])
    doctor = StallDoctor(window=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.random.fork_rng():
        monitor.start(model, 0)
        for step in range(1, steps + 1):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            monitor.after_step(model, loss.item(), F.cross_entropy, (x, y), opt, batch_size=24, step=step)
            doctor.after_step(model, loss.item(), F.cross_entropy, (x, y), opt)
    return monitor, doctor


def digest(obj) -> str:
    """One hash of a nested state (tensors by dtype, shape and bits; the rest by repr)."""
    h = hashlib.sha256()

    def add(o):
        if isinstance(o, torch.Tensor):
            h.update(f"T{o.dtype}{tuple(o.shape)}".encode())
            h.update(o.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(b"{")
            for k in o:
                h.update(repr(k).encode())
                add(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(type(o).__name__.encode())
            for v in o:
                add(v)
        else:
            h.update(f"{type(o).__name__}:{o!r}".encode())

    add(obj)
    return h.hexdigest()


def message_of(info) -> str:
    message = str(info.value)
    assert "\n" not in message.strip(), f"more than one line: {message!r}"
    return message


# ---------------------------------------------------------------- crafted files at checkpoint-N/trainlab_callback.pt

hf = pytest.importorskip("trainlab.integrations.hf", reason="transformers is not installed")


class Payload:
    """Unpickled, it would run ``call(*args)``: what a crafted checkpoint carries."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


class Foreign:
    """A harmless object of a class of ours: still no tensor nor plain type."""

    def __init__(self):
        self.value = 1


def marker_of(tmp: Path) -> Path:
    return tmp / "markers" / "PWNED"


def payloads(tmp: Path) -> dict:
    marker = str(marker_of(tmp))
    return {
        "os-system": Payload(os.system, f"touch '{marker}'"),
        "exec": Payload(exec, f"open({marker!r}, 'w').write('x')"),
        "subprocess": Payload(subprocess.call, ["touch", marker]),
        "eval": Payload(eval, f"open({marker!r}, 'w')"),
    }


def good_state(tmp: Path) -> dict:
    monitor, doctor = trained_parts(small_model())
    return states(monitor, doctor)


def save(obj, **kw):
    def write(path: Path, tmp: Path) -> None:
        torch.save(obj(tmp) if callable(obj) else obj, path, **kw)
    return write


def raw_pickle(obj):
    def write(path: Path, tmp: Path) -> None:
        path.write_bytes(pickle.dumps(obj(tmp), protocol=2))
    return write


def truncated(path: Path, tmp: Path) -> None:
    buffer = io.BytesIO()
    torch.save(good_state(tmp), buffer)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def edited(change):
    """A good state with ``change(state, tmp)`` applied."""
    def write(path: Path, tmp: Path) -> None:
        state = good_state(tmp)
        change(state, tmp)
        torch.save(state, path)
    return write


def set_in(keys, value):
    def change(state, tmp):
        target = state
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value(tmp) if callable(value) else value
    return change


def other_model_state(tmp: Path) -> dict:
    monitor, doctor = trained_parts(small_model(hidden=7))
    return states(monitor, doctor)


def renamed_previous(state, tmp):
    previous = state["monitor"]["previous"]
    state["monitor"]["previous"] = {f"encoder.{k}": v for k, v in previous.items()}


def shorter_vector(state, tmp):
    state["monitor"]["instruments"]["sharpness"]["vector"] = torch.ones(10, dtype=torch.float32)


def crafted(id, write, *names):
    """A file ``write(path, tmp)`` at the state path; the refusal must name ``names`` (and the path)."""
    return pytest.param(write, names, id=id)


CRAFTED = [
    crafted("reduce-os-system", save(lambda t: payloads(t)["os-system"]), "objects other than tensors"),
    crafted("reduce-exec", save(lambda t: payloads(t)["exec"]), "objects other than tensors"),
    crafted("reduce-subprocess", save(lambda t: payloads(t)["subprocess"]), "objects other than tensors"),
    crafted("reduce-eval", save(lambda t: payloads(t)["eval"]), "objects other than tensors"),
    crafted("reduce-inside-the-monitor-state", edited(set_in(["monitor", "latest"], lambda t: payloads(t)["os-system"])),
            "objects other than tensors"),
    crafted("reduce-inside-the-doctor-state", edited(set_in(["doctor", "losses"], lambda t: [payloads(t)["exec"]])),
            "objects other than tensors"),
    crafted("reduce-legacy-torch-format", save(lambda t: payloads(t)["os-system"], _use_new_zipfile_serialization=False),
            "objects other than tensors"),
    crafted("reduce-raw-pickle", raw_pickle(lambda t: {"monitor": payloads(t)["os-system"], "doctor": None}),
            "objects other than tensors"),
    crafted("object-of-another-class", save(lambda t: {"monitor": Foreign(), "doctor": None}),
            "objects other than tensors"),
    crafted("deque-inside", save(lambda t: {"monitor": None, "doctor": collections.deque([1.0])}),
            "objects other than tensors"),
    crafted("not-a-dict-list", save([1, 2, 3]), "list"),
    crafted("not-a-dict-tensor", save(torch.zeros(3)), "Tensor"),
    crafted("not-a-dict-none", save(None), "None"),
    crafted("not-a-dict-string", save("monitor"), "str"),
    crafted("dict-without-the-parts", save({"model": torch.zeros(2)}), "'monitor'"),
    crafted("dict-of-wrong-types", save({"monitor": "abc", "doctor": 3}), "monitor"),
    crafted("monitor-missing-keys", save({"monitor": {"step": 1}, "doctor": None}), "monitor"),
    crafted("monitor-step-a-string", edited(set_in(["monitor", "step"], "ten")), "ten"),
    crafted("monitor-step-negative", edited(set_in(["monitor", "step"], -3)), "-3"),
    crafted("monitor-previous-not-tensors", edited(set_in(["monitor", "previous"], {"0.weight": [1.0]})), "tensor"),
    crafted("monitor-reading-without-value", edited(set_in(["monitor", "latest"], {"grad_norm": {"step": 1}})),
            "monitor"),
    crafted("doctor-losses-a-string", edited(set_in(["doctor", "losses"], "low")), "doctor"),
    crafted("doctor-missing-keys", edited(set_in(["doctor"], {"losses": []})), "doctor"),
    crafted("doctor-steps-a-float", edited(set_in(["doctor", "steps"], 2.5)), "2.5"),
    crafted("truncated", truncated, "cut short"),
    crafted("zero-bytes", lambda p, t: p.write_bytes(b""), "empty"),
    crafted("random-bytes", lambda p, t: p.write_bytes(bytes(range(256)) * 4), "torch.load"),
    crafted("text-file", lambda p, t: p.write_text("monitor = 1\n"), "torch.load"),
    crafted("a-directory", lambda p, t: (p.mkdir(), (p / "inside").write_text("x")), "directory"),
    crafted("state-of-a-wider-model", save(other_model_state), "another model", "0.weight"),
    crafted("state-with-other-parameter-names", edited(renamed_previous), "another model", "encoder.0.weight"),
    crafted("sharpness-vector-of-another-length", edited(shorter_vector), "another model", "sharpness"),
]


@pytest.fixture
def hf_scene(tmp_path):
    """A fresh callback and model, and the path a resume at update 10 reads."""
    model = small_model()
    monitor = Monitor(every=1, sample=16, progress=False, instruments=[GradNorm(), UpdateRatio(), Sharpness(every=2)])
    callback = hf.TrainlabCallback(monitor, StallDoctor(window=10), batch_loss=lambda m, b: F.cross_entropy(m(b[0]),
                                                                                                            b[1]))
    out = tmp_path / "out"
    (out / "checkpoint-10").mkdir(parents=True)
    (tmp_path / "markers").mkdir()
    return SimpleNamespace(model=model, callback=callback, out=out, tmp=tmp_path,
                           path=out / "checkpoint-10" / hf.STATE_FILE,
                           args=SimpleNamespace(output_dir=str(out)), state=SimpleNamespace(global_step=10))


@pytest.mark.parametrize("write, names", CRAFTED)
def test_hf_resume_refuses_a_crafted_state_file(hf_scene, write, names):
    s = hf_scene
    write(s.path, s.tmp)
    before, model_before = tree_hash(s.tmp), model_digest(s.model)
    parts_before = digest(s.callback.state_dict())
    with pytest.raises(ConfigError) as info:
        s.callback.on_train_begin(s.args, s.state, None, model=s.model)
    message = message_of(info)
    assert not marker_of(s.tmp).exists(), "the crafted file ran its payload"
    for name in (str(s.path), *names):
        assert name.lower() in message.lower(), f"{name!r} not named in: {message}"
    assert_unchanged(before, tree_hash(s.tmp))
    assert model_digest(s.model) == model_before, "the refused resume changed the model"
    assert not s.model._forward_hooks, "the refused resume left a hook on the model"
    assert digest(s.callback.state_dict()) == parts_before, "the refused state was partly taken"


# ---------------------------------------------------------------- the Lightning callback's state

lightning = pytest.importorskip("trainlab.integrations.lightning", reason="lightning is not installed")


def pl_callback():
    monitor = Monitor(every=1, sample=16, progress=False, instruments=[GradNorm(), UpdateRatio(), Sharpness(every=2)])
    return lightning.TrainlabCallback(monitor, StallDoctor(window=10), loss_fn=F.cross_entropy)


def start(callback, model):
    """Lightning's order: the checkpoint's state first, then ``on_train_start``."""
    trainer = SimpleNamespace(global_step=10, optimizers=[], lr_scheduler_configs=[], num_training_batches=3,
                              accumulate_grad_batches=1, train_dataloader=None)
    callback.data = toy_data()
    callback.on_train_start(trainer, model)


LIGHTNING = [
    pytest.param(lambda t: [1, 2], "list", id="lightning-not-a-dict"),
    pytest.param(lambda t: {"monitor": "abc", "doctor": 3}, "monitor", id="lightning-wrong-types"),
    pytest.param(lambda t: {"monitor": None, "doctor": {"losses": "low", "steps": 1, "quiet_until": 0}}, "doctor",
                 id="lightning-doctor-losses-a-string"),
    pytest.param(lambda t: {"weights": torch.zeros(2)}, "'monitor'", id="lightning-without-the-parts"),
    pytest.param(other_model_state, "another model", id="lightning-state-of-a-wider-model"),
    pytest.param(lambda t: {**other_model_state(t), "updates": "x"}, "updates", id="lightning-updates-a-string"),
]


@pytest.mark.parametrize("make, name", LIGHTNING)
def test_lightning_resume_refuses_a_state_that_is_not_its_own(tmp_path, make, name):
    model, callback = small_model(), pl_callback()
    saved = make(tmp_path)
    before, parts_before, files = model_digest(model), digest(callback.state_dict()), tree_hash(tmp_path)
    with pytest.raises(ConfigError) as info:
        callback.load_state_dict(saved)
        start(callback, model)
    message = message_of(info)
    assert name.lower() in message.lower(), f"{name!r} not named in: {message}"
    assert "TrainlabCallback" in message
    assert model_digest(model) == before
    assert_unchanged(files, tree_hash(tmp_path))
    if "another model" not in message:  # refused while loading: nothing taken
        assert digest(callback.state_dict()) == parts_before


# ---------------------------------------------------------------- import-path shadowing: trainlab diagnose --model

DEPENDENCIES = ["tqdm", "sklearn", "numpy", "matplotlib", "torch"]

MODEL_PY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
"""


def hostile(marker: Path) -> str:
    """A module that, imported, leaves a marker and fails."""
    return (f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
            "raise ImportError('a local file shadowed an installed package')\n"
            "def build():\n    raise SystemExit('never')\n")


def scene(tmp_path: Path, shadows=(), model_py: str = MODEL_PY) -> SimpleNamespace:
    """``work/`` holding mymodel.py, its weights and hostile ``<name>.py`` files; markers outside it."""
    work, markers = tmp_path / "work", tmp_path / "markers"
    work.mkdir()
    markers.mkdir()
    (work / "mymodel.py").write_text(model_py)
    for name in shadows:
        (work / f"{name}.py").write_text(hostile(markers / "IMPORTED"))
    torch.save(small_model().state_dict(), tmp_path / "w.pt")
    return SimpleNamespace(work=work, markers=markers, weights=tmp_path / "w.pt")


def reference_top_eigenvalue() -> float:
    """λ_max of the dense Hessian of ``build()`` with the weights of ``small_model()`` on iris's
    standardised training split, by ``torch.autograd.functional.hessian`` (not trainlab's curvature)."""
    from torch.func import functional_call

    from trainlab import data

    train, _ = data.load("iris")
    x, y = train.tensors
    model = small_model().double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = theta[i:i + shape.numel()].view(shape)
            i += shape.numel()
        return F.cross_entropy(functional_call(model, params, (x.double(),)), y)

    return float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))[-1])


def largest_printed(out: str) -> float:
    line = next(line for line in out.splitlines() if "largest eigenvalues:" in line)
    return float(line.split(":", 1)[1].split(",")[0])


def diagnose_args(s) -> list:
    return ["diagnose", "--model", "mymodel:build", "--weights", s.weights, "--data", "iris", "--no-progress"]


@pytest.fixture(autouse=True)
def _forget_the_users_module():
    """Each case imports its own ``mymodel``: one cached by an earlier case must not answer."""
    sys.modules.pop("mymodel", None)
    yield
    sys.modules.pop("mymodel", None)


def hide(monkeypatch, name: str) -> None:
    """Forget the pure-Python package ``name`` for this case, so an ``import`` looks for it again."""
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, key)


SHADOWS = [pytest.param([name], id=f"local-{name}.py") for name in DEPENDENCIES] + [
    pytest.param(DEPENDENCIES, id="all-five-local")]


@pytest.mark.parametrize("shadows", SHADOWS)
def test_diagnose_imports_the_users_module_without_shadowing(tmp_path, monkeypatch, shadows):
    """The user's module imports the dependency too (tqdm is forgotten first, so it is looked for
    again): the installed one is found, the hostile file is never imported, the analysis gives the
    dense Hessian's λ_max, and sys.path is as it was."""
    imports = "".join(f"import {name}\n" for name in shadows)
    s = scene(tmp_path, shadows, imports + MODEL_PY)
    hide(monkeypatch, "tqdm")
    path_before, files = list(sys.path), tree_hash(s.work)
    result = run_cli(diagnose_args(s), s.work)
    assert result.code == 0, result.err[-3000:]
    assert not (s.markers / "IMPORTED").exists(), (s.markers / "IMPORTED").read_text()
    assert sys.path == path_before, "trainlab diagnose left the current directory on sys.path"
    assert_unchanged(files, tree_hash(s.work))
    assert largest_printed(result.out) == pytest.approx(reference_top_eigenvalue(), rel=1e-3)


@pytest.mark.slow  # a fresh interpreter: torch, sklearn and matplotlib imported anew (about 5 s each)
@pytest.mark.parametrize("how", [pytest.param(["-P", "-m", "trainlab"], id="console-script-path"),
                                 pytest.param(["-m", "trainlab"], id="python-m-trainlab")])
def test_a_fresh_process_never_imports_local_copies_of_its_dependencies(tmp_path, how):
    """A fresh interpreter, where sklearn and matplotlib are first imported after the user's
    module (the data set, the figure): each local copy stays unimported. ``-P`` is a console
    script's import path (no current directory); ``python -m`` puts the directory first."""
    s = scene(tmp_path, DEPENDENCIES)
    files = tree_hash(s.work)
    done = subprocess.run([PYTHON, *how, *diagnose_args(s), "--out", tmp_path / "fig.png"], cwd=s.work,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (s.markers / "IMPORTED").exists(), (s.markers / "IMPORTED").read_text()
    assert (tmp_path / "fig.png").is_file()
    assert_unchanged(files, tree_hash(s.work))
    assert largest_printed(done.stdout) == pytest.approx(reference_top_eigenvalue(), rel=1e-3)


def own_module(name: str) -> str:
    """The user's factory in a file named like an installed package (it also marks if imported)."""
    return "def build():\n    raise SystemExit('the local file was imported')\n"


FACTORIES = [
    pytest.param("mymodel.py", "raise RuntimeError('database unreachable')\n", "mymodel:build",
                 ["mymodel", "database unreachable"], id="module-raises-on-import"),
    pytest.param("mymodel.py", "import sys\nsys.exit(3)\n", "mymodel:build", ["mymodel", "SystemExit"],
                 id="module-exits-on-import"),
    pytest.param("mymodel.py", "def build(:\n", "mymodel:build", ["mymodel", "SyntaxError"],
                 id="module-syntax-error"),
    pytest.param("mymodel.py", "import not_installed_anywhere\n", "mymodel:build",
                 ["not_installed_anywhere"], id="module-imports-a-missing-package"),
    pytest.param("other.py", MODEL_PY, "mymodel:build", ["mymodel"], id="module-missing"),
    pytest.param("mymodel.py", MODEL_PY, "mymodel:make", ["mymodel", "make"], id="factory-missing"),
    pytest.param("mymodel.py", MODEL_PY + "SIZE = 3\n", "mymodel:SIZE", ["SIZE", "int"], id="factory-not-callable"),
    pytest.param("mymodel.py", MODEL_PY + "def conf():\n    return {'width': 5}\n", "mymodel:conf",
                 ["conf", "dict", "nn.Module"], id="factory-returns-a-dict"),
    pytest.param("mymodel.py", MODEL_PY + "def raw():\n    return build().state_dict()\n", "mymodel:raw",
                 ["raw", "OrderedDict"], id="factory-returns-a-state-dict"),
    pytest.param("mymodel.py", MODEL_PY + "def boom():\n    raise ValueError('width')\n", "mymodel:boom",
                 ["boom", "width"], id="factory-raises"),
    pytest.param("mymodel.py", MODEL_PY + "def frozen():\n    return build().requires_grad_(False)\n",
                 "mymodel:frozen", ["trainable"], id="factory-without-trainable-parameters"),
    pytest.param("mymodel.py", MODEL_PY, "mymodel", ["mymodel", "MODULE:FACTORY"], id="no-colon"),
] + [pytest.param(f"{name}.py", own_module(name), f"{name}:build", [name, "installed", f"{name}.py"],
                  id=f"users-module-named-{name}") for name in DEPENDENCIES]


@pytest.mark.parametrize("filename, source, spec, names", FACTORIES)
def test_diagnose_refuses_a_factory_it_cannot_use(tmp_path, filename, source, spec, names):
    s = scene(tmp_path)
    (s.work / "mymodel.py").unlink()
    (s.work / filename).write_text(source)
    path_before = list(sys.path)
    refused(["diagnose", "--model", spec, "--weights", s.weights, "--data", "iris", "--no-progress"], s.work, 2,
            names, watch=[s.markers])
    assert sys.path == path_before, "trainlab diagnose left the current directory on sys.path"


# ---------------------------------------------------------------- states round-trip as plain types

PLAIN = (str, int, float, bool, type(None))


def impure(obj, where="state") -> list[str]:
    """Where ``obj`` holds anything but tensors, dicts, lists, tuples and plain scalars."""
    if isinstance(obj, torch.Tensor) or type(obj) in PLAIN:
        return []
    if type(obj) is dict:
        return [p for k, v in obj.items() for p in impure(k, f"{where} key") + impure(v, f"{where}[{k!r}]")]
    if type(obj) in (list, tuple):
        return [p for i, v in enumerate(obj) for p in impure(v, f"{where}[{i}]")]
    return [f"{where}: {type(obj).__name__}"]


def equal(a, b) -> bool:
    """Exact equality of nested states (tensors bit for bit, NaN equal to NaN, types alike)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a.view(-1).view(torch.uint8) if a.numel() else a,
                                                       b.view(-1).view(torch.uint8) if b.numel() else b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


class NumpyState(Instrument):
    """A user's instrument whose state and readings hold NumPy scalars and arrays."""

    name = "numpy_state"
    runs_model = False

    def __init__(self):
        super().__init__(1)
        import numpy as np

        self.total, self.counts, self.seen = np.float64(0.25), np.arange(3, dtype=np.int64), np.int32(0)

    def read(self, ctx):
        import numpy as np

        self.seen = np.int32(int(self.seen) + 1)
        return {"value": np.float32(0.5), "mean": np.float64(1 / 3), "flag": np.bool_(True)}

    def state_dict(self):
        return {"total": self.total, "counts": self.counts, "seen": self.seen}

    def load_state_dict(self, state):
        import numpy as np

        self.total, self.counts, self.seen = np.float64(state["total"]), np.asarray(state["counts"]), \
            np.int32(state["seen"])


class DequeState(Instrument):
    """A user's instrument keeping a window of values in a deque, and a path."""

    name = "deque_state"
    runs_model = False

    def __init__(self):
        super().__init__(1)
        self.window, self.where = collections.deque([1.0, 2.0], maxlen=4), Path("/tmp/readings")

    def read(self, ctx):
        self.window.append(float(ctx.step))
        return {"value": sum(self.window)}

    def state_dict(self):
        return {"window": self.window, "where": self.where}

    def load_state_dict(self, state):
        self.window, self.where = collections.deque(state["window"], maxlen=4), Path(state["where"])


INSTRUMENTS = {
    "grad_norm": lambda: [GradNorm()],
    "update_ratio": lambda: [UpdateRatio()],
    "units": lambda: [Units()],
    "sharpness": lambda: [Sharpness(every=2)],
    "stability": lambda: [Stability(every=2)],
    "noise_scale": lambda: [NoiseScale(every=2)],
    "gsnr": lambda: [GSNR(every=2)],
    "trace": lambda: [HessianTrace(every=2, samples=4)],
    "numpy-in-a-users-instrument": lambda: [NumpyState()],
    "deque-and-path-in-a-users-instrument": lambda: [DequeState()],
}


@pytest.mark.parametrize("name", list(INSTRUMENTS))
def test_monitor_and_doctor_states_load_with_weights_only_and_round_trip(tmp_path, name):
    model = small_model()
    monitor, doctor = trained_parts(model, instruments=INSTRUMENTS[name]())
    saved = states(monitor, doctor)
    assert impure(saved) == []
    torch.save(saved, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert equal(loaded, saved)
    fresh_monitor, fresh_doctor = Monitor(every=1, sample=16, progress=False, instruments=INSTRUMENTS[name]()), \
        StallDoctor(window=10)
    load_states(fresh_monitor, fresh_doctor, loaded)
    assert equal(states(fresh_monitor, fresh_doctor), saved)


def test_an_instrument_state_that_cannot_be_plain_is_one_sentence_at_save_time():
    class Opaque(Instrument):
        name = "opaque"
        runs_model = False

        def read(self, ctx):
            return {"value": 1.0}

        def state_dict(self):
            return {"handle": Foreign()}

    monitor = Monitor(every=1, progress=False, instruments=[Opaque()])
    with pytest.raises(ConfigError) as info:
        states(monitor, None)
    message = message_of(info)
    for name in ("opaque", "handle", "Foreign"):
        assert name in message, f"{name!r} not named in: {message}"


def test_the_hf_callback_file_round_trips_through_weights_only(tmp_path):
    """on_save writes checkpoint-N/trainlab_callback.pt; a fresh callback resumed from it holds
    exactly the saved state, and the file loads with weights_only=True."""
    model = small_model()
    monitor, doctor = trained_parts(model)
    callback = hf.TrainlabCallback(monitor, doctor, batch_loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    args = SimpleNamespace(output_dir=str(tmp_path))
    callback.on_save(args, SimpleNamespace(global_step=4, is_world_process_zero=True), None)
    path = tmp_path / "checkpoint-4" / hf.STATE_FILE
    assert impure(torch.load(path, weights_only=True)) == []
    fresh = hf.TrainlabCallback(Monitor(every=1, sample=16, progress=False, instruments=[
        GradNorm(), UpdateRatio(), Sharpness(every=2)]), StallDoctor(window=10),
        batch_loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    fresh.on_train_begin(args, SimpleNamespace(global_step=4), None, model=model)
    assert equal(fresh.state_dict(), callback.state_dict())
    fresh.on_train_end(args, None, None)


def test_the_lightning_callback_state_round_trips_through_weights_only(tmp_path):
    model = small_model()
    monitor, doctor = trained_parts(model)
    callback = lightning.TrainlabCallback(monitor, doctor, loss_fn=F.cross_entropy)
    torch.save({"callbacks": {"TrainlabCallback": callback.state_dict()}}, tmp_path / "last.ckpt")
    loaded = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]["TrainlabCallback"]
    assert impure(loaded) == []
    fresh = pl_callback()
    fresh.load_state_dict(loaded)
    assert equal(fresh.state_dict(), callback.state_dict())
