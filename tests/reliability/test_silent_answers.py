"""No silent answers (issue 21, item 3): a Trainer whose optimizer trains none of the model's
parameters, a Monitor reused on another model, an update count that is not one, a custom
instrument's reading that is not JSON, and ``trainlab demo --only`` naming no experiment (or
one twice) are each refused in one sentence naming the value — or, where the issue asks for it,
handled the way a fresh object would (a reused Monitor starts afresh, compared here against a
new Monitor fed the same calls). Nothing changes on a refusal: the model (``model_digest``),
the Monitor's count and readings, and the files (``tree_hash``)."""

from __future__ import annotations

import copy
import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from trainlab.cli.demo import EXPERIMENT_NAMES
from trainlab.errors import ConfigError
from trainlab.instruments import GradNorm, Instrument, Monitor, Sharpness, UpdateRatio, Units
from trainlab.train import Trainer
from trainlab.train.checkpoint import jsonable

from digests import model_digest
from reliability.conftest import assert_unchanged, refused, tree_hash


def net(seed: int = 0, hidden: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def tensors(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 4, generator=g), torch.arange(n) % 3


def one_line(message: str, *names: str) -> None:
    """One sentence on one line naming every fragment of ``names``."""
    assert "\n" not in message.strip(), message
    missing = [n for n in names if n.lower() not in message.lower()]
    assert not missing, f"{missing} not named in: {message}"


# ---------------------------------------------------------------- a Trainer whose optimizer trains nothing


def frozen(model: nn.Module, *indices: int) -> nn.Module:
    for i in indices:
        model[i].requires_grad_(False)
    return model


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(list(params), lr=0.1)


#: ``(model) -> optimizer`` that trains none of the model's parameters, with fragments the refusal names.
NOTHING_TRAINED = [
    pytest.param(lambda m: sgd(net(1).parameters()), ("optimizer", "parameters"),
                 id="another-model-same-architecture"),
    pytest.param(lambda m: sgd(net(1, hidden=7).parameters()), ("optimizer", "parameters"),
                 id="another-model-other-architecture"),
    pytest.param(lambda m: sgd(copy.deepcopy(m).parameters()), ("optimizer", "parameters"),
                 id="a-deep-copy-of-the-model"),
    pytest.param(lambda m: sgd([nn.Parameter(torch.zeros(3))]), ("optimizer", "parameters"),
                 id="a-free-tensor"),
    pytest.param(lambda m: torch.optim.Adam([{"params": net(1).parameters()}, {"params": net(2).parameters()}]),
                 ("optimizer", "parameters"), id="two-groups-of-other-models"),
    pytest.param(lambda m: sgd(frozen(m, 0, 2).parameters()), ("optimizer", "requires_grad"),
                 id="every-parameter-frozen"),
    pytest.param(lambda m: sgd(frozen(m, 0)[0].parameters()), ("optimizer", "requires_grad"),
                 id="only-the-frozen-layer"),
    pytest.param(lambda m: None, ("optimizer", "None"), id="optimizer-None"),
    pytest.param(lambda m: list(m.parameters()), ("optimizer", "list"), id="a-list-of-parameters"),
    pytest.param(lambda m: "sgd", ("optimizer", "'sgd'"), id="a-string"),
]


@pytest.mark.parametrize("make_optimizer, names", NOTHING_TRAINED)
def test_trainer_refuses_an_optimizer_that_trains_none_of_the_model(tmp_path, make_optimizer, names):
    """issue 21: ``Trainer(model, SGD(other.parameters()))`` trained nothing for the whole run, without a word."""
    model = net(0)
    optimizer = make_optimizer(model)
    x, y = tensors()
    before, files = model_digest(model), tree_hash(tmp_path)
    with pytest.raises(ConfigError) as info:
        Trainer(model, optimizer, F.cross_entropy, TensorDataset(x, y), batch_size=8, epochs=1, device="cpu",
                out=tmp_path / "run", progress=False)
    one_line(str(info.value), *names)
    assert model_digest(model) == before
    assert_unchanged(files, tree_hash(tmp_path))


def fit(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x, y = tensors()
    Trainer(model, optimizer, F.cross_entropy, TensorDataset(x, y), batch_size=8, epochs=1, device="cpu",
            progress=False).fit()


#: ``(model) -> optimizer``: fine, it trains some of the model's parameters.
SOME_TRAINED = [
    pytest.param(lambda m: sgd(m[2].parameters()), id="only-the-last-layer"),
    pytest.param(lambda m: sgd([m[0].weight]), id="one-tensor"),
    pytest.param(lambda m: sgd([*m[2].parameters(), *net(1).parameters()]), id="last-layer-and-another-model"),
    pytest.param(lambda m: sgd(frozen(m, 0).parameters()), id="frozen-first-layer-in-the-optimizer"),
]


@pytest.mark.parametrize("make", SOME_TRAINED)
def test_trainer_trains_the_parameters_its_optimizer_holds(make):
    """An optimizer holding some of the model's parameters trains exactly those that require a
    gradient: the others keep their bits (the reference: a copy taken before the run)."""
    model = net(0)
    optimizer = make(model)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    fit(model, optimizer)
    for name, p in model.named_parameters():
        assert (not torch.equal(p, start[name])) == (id(p) in held and p.requires_grad), name


# ---------------------------------------------------------------- a Monitor reused on another model


def instruments() -> list:
    """update_ratio keeps the parameters, sharpness a warm-start vector: both belong to one model."""
    return [UpdateRatio(), GradNorm(), Units(), Sharpness(every=1, refresh=None, tol=1e-6)]


def train_and_read(monitor: Monitor, model: nn.Module, steps: int, seed: int = 5, first: int | None = None) -> list:
    """``steps`` SGD updates of ``model`` on fixed batches, the Monitor read after each (at updates
    ``first``, ``first + 1``, … when given, else counted by the Monitor); its readings."""
    x, y = tensors(30)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(steps):
        i = torch.randperm(30, generator=g)[:10]
        opt.zero_grad()
        loss = F.cross_entropy(model(x[i]), y[i])
        loss.backward()
        opt.step()
        out += monitor.after_step(model, loss, F.cross_entropy, (x, y), opt, step=None if first is None else first + k)
    return out


def reshaped(model: nn.Module) -> nn.Module:
    """The same module object with its layers replaced by wider ones (model surgery)."""
    torch.manual_seed(4)
    model[0], model[2] = nn.Linear(4, 6), nn.Linear(6, 3)
    return model


def refrozen(model: nn.Module) -> nn.Module:
    """The same module object with its first layer frozen: another set of trained parameters."""
    return frozen(model, 0)


#: ``(first model) -> the model the Monitor then reads``, and whether the update count starts afresh
#: (another object: a new run; the same object reshaped: the same run, its count goes on).
REUSED = [
    pytest.param(lambda a: net(1, hidden=7), True, id="another-architecture"),
    pytest.param(lambda a: net(1), True, id="same-architecture-another-instance"),
    pytest.param(lambda a: copy.deepcopy(a), True, id="a-deep-copy"),
    pytest.param(reshaped, False, id="same-object-parameter-shapes-changed"),
    pytest.param(refrozen, False, id="same-object-a-layer-frozen"),
]


def summary(readings: list) -> list:
    return [(r.step, r.instrument, r.value, {k: v for k, v in r.extra.items() if k != "seconds"}) for r in readings]


@pytest.mark.parametrize("second, recount", REUSED)
def test_monitor_reused_on_another_model_starts_afresh(second, recount):
    """issue 21: a Monitor used on model A and then on B read B's update ratio against A's
    parameters and warm-started B's Lanczos from A's eigenvector. Reference: a new Monitor fed the
    same calls on B (the count shifted when the same model goes on)."""
    a = net(0)
    monitor = Monitor(every=1, sample=30, instruments=instruments(), progress=False)
    train_and_read(monitor, a, 3)
    b = second(a)
    b_copy = copy.deepcopy(b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = train_and_read(monitor, b, 3)
    fresh = Monitor(every=1, sample=30, instruments=instruments(), progress=False)
    want = train_and_read(fresh, b_copy, 3, first=None if recount else 4)
    assert summary(got) == summary(want)
    notes = [str(w.message) for w in caught if "model" in str(w.message).lower()]
    assert len(notes) == 1, [str(w.message) for w in caught]
    one_line(notes[0], "Monitor", "model")
    assert [r.instrument for r in monitor.latest.values()] == [r.instrument for r in fresh.latest.values()]


def test_monitor_reused_by_a_second_trainer_starts_afresh():
    """The same Monitor object in two Trainers (two experiments in a loop): the second run's
    readings are those of a new Monitor."""
    x, y = tensors()

    def run(monitor: Monitor, model: nn.Module) -> list:
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, TensorDataset(x, y),
                batch_size=8, epochs=2, device="cpu", progress=False, callbacks=[monitor]).fit()
        return monitor.history

    shared = Monitor(every=1, sample=24, instruments=instruments(), progress=False)
    run(shared, net(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = run(shared, net(1))[-6 * 4:]
    want = run(Monitor(every=1, sample=24, instruments=instruments(), progress=False), net(1))
    assert summary(got) == summary(want)


# ---------------------------------------------------------------- update counts


def stepped(monitor: Monitor, model: nn.Module, step) -> list:
    x, y = tensors()
    return monitor.after_step(model, None, F.cross_entropy, (x, y), step=step)


#: ``(steps given before, the hostile step, fragments the refusal names)``
BAD_STEPS = [
    pytest.param([], -5, ("step", "-5"), id="negative"),
    pytest.param([], -1, ("step", "-1"), id="minus-one"),
    pytest.param([], 0, ("step", "0"), id="zero-no-update-done"),
    pytest.param([], 2.5, ("step", "2.5"), id="fractional"),
    pytest.param([], 3.0, ("step", "3.0"), id="float"),
    pytest.param([], "3", ("step", "'3'"), id="string"),
    pytest.param([], True, ("step", "True"), id="bool"),
    pytest.param([], [3], ("step", "[3]"), id="list"),
    pytest.param([], math.nan, ("step", "nan"), id="nan"),
    pytest.param([], torch.tensor(2.0), ("step", "tensor"), id="float-tensor"),
    pytest.param([10], 5, ("step", "5", "10"), id="backwards"),
    pytest.param([10], 10, ("step", "10"), id="repeated"),
]


@pytest.mark.parametrize("earlier, step, names", BAD_STEPS)
def test_after_step_refuses_a_step_that_is_not_an_update_count(earlier, step, names):
    """issue 21: ``after_step(step=-5)`` was taken as the count: readings at update -5."""
    model = net(0)
    monitor = Monitor(every=1, sample=24, instruments=[GradNorm()], progress=False)
    for s in earlier:
        stepped(monitor, model, s)
    count, history, before = monitor.step, list(monitor.history), model_digest(model)
    with pytest.raises(ConfigError) as info:
        stepped(monitor, model, step)
    one_line(str(info.value), *names)
    assert (monitor.step, monitor.history) == (count, history)
    assert model_digest(model) == before


@pytest.mark.parametrize("step", [pytest.param(np.int64(7), id="numpy-int64"),
                                  pytest.param(torch.tensor(7), id="integer-tensor"),
                                  pytest.param(7, id="int")])
def test_after_step_takes_any_integer_count(step):
    readings = stepped(Monitor(every=1, sample=24, instruments=[GradNorm()], progress=False), net(0), step)
    assert [(r.step, type(r.step)) for r in readings] == [(7, int)]


# ---------------------------------------------------------------- readings that are not JSON


class Returns(Instrument):
    """An instrument that returns ``payload`` (a callable building the reading)."""

    runs_model = False

    def __init__(self, payload, name: str = "mine"):
        super().__init__(every=1)
        self.payload, self.name = payload, name

    def read(self, ctx):
        return self.payload()


class Odd:
    def __repr__(self) -> str:
        return "<an Odd>"


def read_once(payload, name: str = "mine") -> tuple[object, list[str], nn.Module]:
    """One reading of ``Returns(payload)``: the reading and the warnings' messages."""
    model = net(0)
    monitor = Monitor(every=1, sample=24, instruments=[Returns(payload, name)], progress=False)
    before = model_digest(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (reading,) = stepped(monitor, model, None)
    assert model_digest(model) == before
    return reading, [str(w.message) for w in caught]


def written(reading) -> dict:
    """The line the Trainer writes for ``reading`` (strict JSON) and parses back."""
    return json.loads(json.dumps(jsonable(reading.to_dict()), allow_nan=False))


#: ``(payload, fragments the warning and the reading's error name)``: refused, recorded as a failed reading.
NOT_JSON = [
    pytest.param(lambda: {"value": 1.0, "z": 1 + 2j}, ("'mine'", "complex", "z"), id="extra-complex"),
    pytest.param(lambda: {"value": 1.0, "s": {1, 2}}, ("'mine'", "set", "s"), id="extra-set"),
    pytest.param(lambda: {"value": 1.0, "o": Odd()}, ("'mine'", "Odd", "o"), id="extra-object"),
    pytest.param(lambda: {"value": 1.0, "b": b"\x00"}, ("'mine'", "bytes", "b"), id="extra-bytes"),
    pytest.param(lambda: {"value": 1.0, "d": {(1, 2): 3}}, ("'mine'", "tuple", "d"), id="extra-dict-tuple-keys"),
    pytest.param(lambda: {"value": 1.0, "l": [1, [2, 1j]]}, ("'mine'", "complex", "l"), id="extra-nested-complex"),
    pytest.param(lambda: {"value": 1.0, "big": 10 ** 5000}, ("'mine'", "int", "big"), id="extra-5000-digit-int"),
    pytest.param(lambda: {"value": 1.0, "f": print}, ("'mine'", "builtin_function", "f"), id="extra-function"),
    pytest.param(lambda: {"value": "3.5"}, ("'mine'", "str", "value"), id="value-string"),
    pytest.param(lambda: {"value": True}, ("'mine'", "bool", "value"), id="value-bool"),
    pytest.param(lambda: {"value": None}, ("'mine'", "None", "value"), id="value-None"),
    pytest.param(lambda: {"value": 1 + 2j}, ("'mine'", "complex", "value"), id="value-complex"),
    pytest.param(lambda: {"value": torch.ones(2)}, ("'mine'", "Tensor", "value"), id="value-tensor-of-two"),
    pytest.param(lambda: {"value": np.ones(3)}, ("'mine'", "ndarray", "value"), id="value-array-of-three"),
    pytest.param(lambda: {"value": 10 ** 5000}, ("'mine'", "int", "value"), id="value-5000-digit-int"),
    pytest.param(lambda: {"v": 1.0}, ("'mine'", "value"), id="no-value-key"),
    pytest.param(lambda: [1.0], ("'mine'", "list"), id="reading-a-list"),
    pytest.param(lambda: 2.0, ("'mine'", "float"), id="reading-a-number"),
]


@pytest.mark.parametrize("payload, names", NOT_JSON)
def test_a_reading_that_is_not_json_is_named_not_a_traceback(payload, names):
    """issue 21: a complex or a set among a custom instrument's fields surfaced as json.dumps'
    TypeError from deep inside the Trainer's log writing; a string value was taken as a number.
    Now a failed reading (training goes on, as for any failing instrument): value NaN, one
    warning naming the instrument and the type, and a line that is strict JSON."""
    reading, messages = read_once(payload)
    assert math.isnan(reading.value)
    assert len(messages) == 1, messages
    one_line(messages[0], *names)
    one_line(reading.extra["error"], *names[1:])
    assert written(reading)["value"] is None


#: ``(payload, the fields expected in the written line)``: converted or kept, checked against plain Python.
JSON_ENOUGH = [
    pytest.param(lambda: {"value": torch.tensor(2.5), "t": torch.arange(3.0)}, {"value": 2.5, "t": [0.0, 1.0, 2.0]},
                 id="tensors"),
    pytest.param(lambda: {"value": np.float32(0.5), "a": np.arange(3), "f": np.float32(0.25), "i": np.int64(4)},
                 {"value": 0.5, "a": [0, 1, 2], "f": 0.25, "i": 4}, id="numpy"),
    pytest.param(lambda: {"value": np.array([1.5])}, {"value": 1.5}, id="value-array-of-one"),
    pytest.param(lambda: {"value": math.nan, "x": math.inf, "y": [-math.inf, 1.0]},
                 {"value": None, "x": None, "y": [None, 1.0]}, id="nan-and-inf-as-null"),
    pytest.param(lambda: {"value": 1, "d": {1: 2, "k": (3, 4)}, "n": None, "s": "é ✓"},
                 {"value": 1.0, "d": {"1": 2, "k": [3, 4]}, "n": None, "s": "é ✓"}, id="int-keys-tuples-text"),
]


@pytest.mark.parametrize("payload, fields", JSON_ENOUGH)
def test_readings_json_can_hold_are_written(payload, fields):
    reading, messages = read_once(payload)
    assert messages == []
    line = written(reading)
    assert {k: line[k] for k in fields} == fields
    assert "error" not in line


def test_a_trainer_run_with_a_non_json_reading_completes(tmp_path):
    """The run goes on and instruments.jsonl stays strict JSON, the failed reading named."""
    x, y = tensors()
    model = net(0)
    monitor = Monitor(every=1, sample=24, progress=False,
                      instruments=[Returns(lambda: {"value": 1.0, "z": 1j}), GradNorm()])
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, TensorDataset(x, y),
                batch_size=8, epochs=1, device="cpu", progress=False, callbacks=[monitor], out=tmp_path / "run").fit()
    lines = [json.loads(line) for line in (tmp_path / "run" / "instruments.jsonl").read_text().splitlines()]
    assert [(r["step"], r["instrument"]) for r in lines] == [(s, n) for s in (1, 2, 3) for n in ("mine", "grad_norm")]
    assert all("complex" in r["error"] for r in lines if r["instrument"] == "mine")


# ---------------------------------------------------------------- trainlab demo --only


@pytest.fixture
def no_experiment_runs(monkeypatch):
    """A refusal comes before any experiment runs (an unrefused one would take minutes)."""
    from trainlab.experiments import EXPERIMENTS

    def ran(config):
        raise AssertionError("an experiment ran instead of the refusal")

    for name in EXPERIMENT_NAMES:
        monkeypatch.setitem(EXPERIMENTS, name, SimpleNamespace(run=ran))


ALL = EXPERIMENT_NAMES  # an empty choice names every allowed one
BAD_ONLY = [
    pytest.param(["demo", "--only", ""], ["--only", *ALL], id="empty"),
    pytest.param(["demo", "--only", " "], ["--only", *ALL], id="blank"),
    pytest.param(["demo", "--only", " , "], ["--only", *ALL], id="blank-comma"),
    pytest.param(["demo", "--only", ","], ["--only", *ALL], id="comma"),
    pytest.param(["demo", "--only", "momentum,momentum"], ["momentum", "twice"], id="duplicate"),
    pytest.param(["demo", "--only", "sharpness, momentum ,sharpness"], ["sharpness", "twice"], id="duplicate-spaced"),
    pytest.param(["demo", "--only", "momentum,nosuch"], ["nosuch", *ALL], id="one-unknown"),
    pytest.param(["demo", "--only", "Momentum"], ["Momentum", *ALL], id="capitalised"),
    pytest.param(["demo", "--only", "momentum;sharpness"], ["momentum;sharpness"], id="semicolon"),
    pytest.param(["demo", "--only", "<script>"], ["<script>"], id="markup"),
    pytest.param(["experiment", ""], ["''", *ALL], id="experiment-empty"),
    pytest.param(["experiment", "momentum,sharpness"], ["momentum,sharpness"], id="experiment-two-names"),
]


@pytest.mark.parametrize("args, names", BAD_ONLY)
def test_demo_only_names_no_experiment(tmp_path, no_experiment_runs, args, names):
    """issue 21: ``trainlab demo --only ""`` ran every experiment (minutes) instead of refusing."""
    refused([*args, "--quick", "--no-progress", "--out", tmp_path / "report"], tmp_path, 2, names)
