"""No file is ever unpickled (issue 21): every ``torch.load`` in ``src/`` and ``benchmarks/``
passes ``weights_only=True`` in the call itself, nothing passes ``weights_only=False``, and
nothing calls ``pickle.load``/``loads``, an ``Unpickler``, ``cPickle``, ``dill``, ``joblib.load``,
``marshal.loads``, ``shelve.open``, ``yaml.load``/``unsafe_load`` or ``np.load(...,
allow_pickle=True)``. The calls are found in the syntax tree (so a docstring that names
``weights_only=False`` is not a hit); the checker is itself checked on planted snippets.

An exception needs an entry in :data:`ALLOWED`, ``(file, line's code) -> why``: there is none.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("src", "benchmarks")

#: ``(path relative to the repository, the flagged call as written) -> why it is safe``.
ALLOWED: dict[tuple[str, str], str] = {}

#: Modules whose loading functions unpickle (or run code) whatever they read: ``module -> functions``.
UNSAFE = {"pickle": {"load", "loads", "Unpickler"}, "_pickle": {"load", "loads", "Unpickler"},
          "cPickle": {"load", "loads", "Unpickler"}, "dill": {"load", "loads", "Unpickler"},
          "joblib": {"load"}, "marshal": {"load", "loads"}, "shelve": {"open"},
          "yaml": {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"}}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` of a name or an attribute chain ('' for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source: str) -> list[tuple[int, str]]:
    """``(line, why)`` of every unsafe load in ``source``: names are resolved through the file's
    imports (``import pickle as p``, ``from torch import load``, ``import numpy as np``)."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> the dotted name it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.partition(".")[0]] = a.name if a.asname else a.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        name = aliases.get(head, head) + (f".{rest}" if rest else "")
        module, _, function = name.rpartition(".")
        if _is(_keyword(node, "weights_only"), False):
            found.append((node.lineno, f"{name}(weights_only=False)"))
        elif name in ("torch.load", "torch.serialization.load") and not _is(_keyword(node, "weights_only"), True):
            found.append((node.lineno, f"{name}() without weights_only=True in the call"))
        elif function in UNSAFE.get(module.partition(".")[0], set()):
            found.append((node.lineno, f"{name}() unpickles or runs what it reads"))
        elif name in ("numpy.load", "np.load") and not _is(_keyword(node, "allow_pickle"), False) \
                and _keyword(node, "allow_pickle") is not None:
            found.append((node.lineno, f"{name}(allow_pickle=...) may unpickle object arrays"))
    return found


def sources() -> list[Path]:
    return sorted(p for root in ROOTS for p in (REPO / root).rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_is_unpickled(path):
    lines = path.read_text().splitlines()
    rel = str(path.relative_to(REPO))
    bad = [f"{rel}:{line}: {why}" for line, why in unsafe_calls(path.read_text())
           if (rel, lines[line - 1].strip()) not in ALLOWED]
    assert not bad, "unsafe loads (load with weights_only=True, or add a reasoned ALLOWED entry):\n" + "\n".join(bad)


PLANTED = [
    ("import torch\ntorch.load(f)\n", 1),
    ("import torch\ntorch.load(f, weights_only=False)\n", 1),
    ("import torch\ntorch.load(f, map_location='cpu', weights_only=flag)\n", 1),
    ("from torch import load\nload(f)\n", 1),
    ("import torch as t\nt.load(f)\n", 1),
    ("import torch\ntorch.serialization.load(f)\n", 1),
    ("import pickle\npickle.loads(b)\n", 1),
    ("import pickle as p\np.load(f)\n", 1),
    ("from pickle import loads\nloads(b)\n", 1),
    ("import pickle\npickle.Unpickler(f).load()\n", 1),
    ("import dill\ndill.load(f)\n", 1),
    ("import joblib\njoblib.load(f)\n", 1),
    ("import cPickle\ncPickle.load(f)\n", 1),
    ("import numpy as np\nnp.load(f, allow_pickle=True)\n", 1),
    ("import yaml\nyaml.load(s)\n", 1),
    ("x = run(weights_only=False)\n", 1),
    ("import torch\ntorch.load(f, weights_only=True)\n", 0),
    ("import numpy as np\nnp.load(f, allow_pickle=False)\nnp.load(f)\n", 0),
    ("import pickle\npickle.dumps(x)\nraise pickle.UnpicklingError('x')\n", 0),
    ('"""never torch.load(f, weights_only=False)"""\n', 0),
]


@pytest.mark.parametrize("source, hits", PLANTED, ids=[f"planted-{i}" for i in range(len(PLANTED))])
def test_the_checker_finds_planted_unsafe_loads(source, hits):
    assert len(unsafe_calls(source)) == hits, unsafe_calls(source)
