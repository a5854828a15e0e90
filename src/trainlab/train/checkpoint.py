"""Atomic writes, and checkpoints read back only when they are whole and fit.

Each file is written to a temporary sibling, flushed to disk (``fsync``) and then moved
over the target with :func:`os.replace`, which is atomic on POSIX and Windows: a reader
sees either the previous complete file or the new complete one. A failed write raises the
:class:`OSError` with the target's path in ``filename``.

:func:`load` refuses anything that is not a readable dict of tensors and plain containers
(an empty, truncated or foreign file) with a :class:`~trainlab.errors.DataError` naming
the path; :func:`check_module_state`, :func:`check_optimizer_state` and
:func:`non_finite` check that a loaded state fits a model and optimizer and is finite.
"""

from __future__ import annotations

import errno
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, IO, Iterable

import torch
from torch import nn

from trainlab.errors import DataError


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        # the user needs the file they asked for: a failed write() names none, a failed open() the temporary one
        if e.errno is not None and (e.filename is None or str(e.filename) == str(tmp)):
            e.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def save(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically."""
    _atomic(Path(path), lambda f: torch.save(obj, f))


def load(path: str | Path, map_location: str | torch.device | None = None,
         require: Iterable[str] = ()) -> dict[str, Any]:
    """A checkpoint written by :func:`save`: a dict of tensors and plain containers.

    Raises :class:`DataError` naming ``path`` when the file is empty, truncated, not a
    PyTorch file, holds anything but such a dict, or lacks a key of ``require``. An
    :class:`OSError` (missing file, no permission) passes through: it is the environment's.
    """
    where = repr(str(path))
    with open(path, "rb") as f:  # the environment's faults (missing, no permission, a directory) are raised here
        try:
            with warnings.catch_warnings():  # torch's own warnings would add lines to a one-line error
                warnings.simplefilter("ignore")
                state = torch.load(f, map_location=map_location, weights_only=True)
        except Exception as e:
            if isinstance(e, OSError) and e.errno == errno.EIO:  # the disk failed, not the file's contents
                raise
            raise _unreadable(path, e) from None
    if not isinstance(state, dict):
        raise DataError(f"checkpoint {where} is not a trainlab checkpoint: it holds a {type(state).__name__},"
                        " not a dict of states")
    missing = [key for key in require if key not in state]
    if missing:
        raise DataError(f"checkpoint {where} is incomplete: it lacks {', '.join(map(repr, missing))}")
    return state


def _unreadable(path: str | Path, error: Exception) -> DataError:
    # Why an OSError can land here: torch reports a zip archive cut short as EINVAL from a seek.
    if Path(path).stat().st_size == 0:
        return DataError(f"checkpoint {str(path)!r} is empty (0 bytes), so it holds no run to load")
    return DataError(f"checkpoint {str(path)!r} cannot be read ({type(error).__name__}): it is truncated, damaged or"
                     " not a checkpoint written by trainlab")


def check_module_state(state: Any, module: nn.Module, path: str | Path) -> None:
    """Refuse (``DataError``) a model state that ``module.load_state_dict`` would not take
    whole: other keys, or a tensor of another shape."""
    where = repr(str(path))
    expected = module.state_dict()
    if not isinstance(state, dict):
        raise DataError(f"checkpoint {where} does not hold a model state (a dict of tensors)")
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which the model does not"
        raise DataError(f"checkpoint {where} does not fit the model: it {what}"
                        f" ({len(missing)} missing, {len(extra)} unexpected keys)")
    for k, v in expected.items():
        if not isinstance(v, torch.Tensor):  # a module's extra state: its own load_state_dict judges it
            continue
        if not isinstance(state[k], torch.Tensor):
            raise DataError(f"checkpoint {where} does not fit the model: {k!r} is a {type(state[k]).__name__} there,"
                            " not a tensor")
        if state[k].shape != v.shape:
            raise DataError(f"checkpoint {where} does not fit the model: {k!r} has shape {tuple(state[k].shape)}"
                            f" there and {tuple(v.shape)} in the model")


def check_optimizer_state(state: Any, optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """Refuse (``DataError``) an optimizer state for other parameters: another number of
    groups or parameters per group, or a per-parameter tensor of another shape (0-d
    tensors such as Adam's ``step`` are allowed)."""
    where = repr(str(path))
    groups = state.get("param_groups") if isinstance(state, dict) else None
    per_param = state.get("state") if isinstance(state, dict) else None
    if not isinstance(groups, list) or not isinstance(per_param, dict) or \
            not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise DataError(f"checkpoint {where} does not hold an optimizer state (state and param_groups)")
    sizes = [len(g["params"]) for g in groups]
    expected = [len(g["params"]) for g in optimizer.param_groups]
    if sizes != expected:
        raise DataError(f"checkpoint {where} does not fit the optimizer: parameter groups of sizes {sizes} there,"
                        f" {expected} here")
    for saved, own in zip(groups, optimizer.param_groups):
        if set(saved) != set(own):  # another optimizer's hyper-parameters (sgd's momentum where adam has betas)
            raise DataError(f"checkpoint {where} holds the state of another optimizer: its settings are"
                            f" {sorted(set(saved) - {'params'})}, this {type(optimizer).__name__}'s are"
                            f" {sorted(set(own) - {'params'})}")
    params = dict(zip((i for g in groups for i in g["params"]),
                      (p for g in optimizer.param_groups for p in g["params"])))
    for index, entry in per_param.items():
        if index not in params or not isinstance(entry, dict):
            raise DataError(f"checkpoint {where} does not fit the optimizer: state for unknown parameter {index!r}")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != params[index].shape:
                raise DataError(f"checkpoint {where} does not fit the optimizer: {name!r} of parameter {index} has"
                                f" shape {tuple(value.shape)}, the parameter {tuple(params[index].shape)}")


def non_finite(tree: Any, prefix: str = "") -> str | None:
    """The dotted name of the first floating tensor (or float) in ``tree`` holding NaN or
    ±∞, or ``None`` when all are finite."""
    if isinstance(tree, torch.Tensor):
        finite = not tree.is_floating_point() and not tree.is_complex() or bool(torch.isfinite(tree).all())
        return None if finite else prefix
    if isinstance(tree, float):
        return None if math.isfinite(tree) else prefix
    if isinstance(tree, dict):
        items: Iterable[tuple[Any, Any]] = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return None
    for k, v in items:
        bad = non_finite(v, f"{prefix}.{k}" if prefix else str(k))
        if bad is not None:
            return bad
    return None


def write_text(text: str, path: str | Path) -> None:
    """``text`` into ``path`` (UTF-8), atomically."""
    _atomic(Path(path), lambda f: f.write(text.encode()))


def write_json(obj: Any, path: str | Path) -> None:
    """``obj`` as indented JSON, atomically; non-finite floats become ``null``."""
    write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n", path)


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN/Inf floats replaced by ``None`` (JSON has no such numbers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj
