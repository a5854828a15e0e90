"""Where users train: trainlab's instruments and stall doctor as the callbacks their frameworks expect.

- :mod:`trainlab.integrations.lightning`: ``TrainlabCallback``, a PyTorch Lightning callback
  (extra ``trainlab[lightning]``);
- :mod:`trainlab.integrations.hf`: ``TrainlabCallback``, a Hugging Face ``TrainerCallback``
  (extra ``trainlab[hf]``);
- :mod:`trainlab.integrations.tensorboard`: readings and doctor events as TensorBoard scalars
  and text (extra ``trainlab[tensorboard]``).

Each submodule imports its framework when it is imported; ``import trainlab`` never does. A
framework that is not installed gives one sentence naming the ``pip install`` to run
(:func:`require`). What every integration logs is named here, once: :func:`scalars` and
:func:`event_scalars`.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import torch

from trainlab.errors import ConfigError
from trainlab.state import PLAIN, plain

#: The prefix of every logged name.
PREFIX = "trainlab"


def require(module: str, extra: str, package: str) -> ModuleType:
    """Import ``module`` (of the pip package ``package``), or raise an :class:`ImportError` whose
    one sentence names the ``pip install`` to run (the ``trainlab[extra]`` extra)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"trainlab.integrations.{extra} needs the {package!r} package, which cannot be imported"
                          f" ({type(e).__name__}: {e}); install it with: pip install 'trainlab[{extra}]'"
                          f" (or pip install {package})") from None


def tensorboard_dir(value: Any, owner: str = "") -> Path | None:
    """A ``tensorboard=`` argument checked (``owner`` prefixes the message, e.g. ``"Monitor"``):
    ``None``, or a directory path that is not a file, with the ``tensorboard`` package importable
    (else :func:`require`'s one sentence) — all before anything is written."""
    if value is None:
        return None
    prefix = f"{owner}: " if owner else ""
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"{prefix}tensorboard={value!r} is not allowed; expected a directory path or None")
    if os.path.exists(value) and not os.path.isdir(value):
        raise ConfigError(f"{prefix}tensorboard={str(value)!r} is a file; expected a directory for TensorBoard's"
                          " event files")
    from trainlab.integrations import tensorboard  # noqa: F401 (a missing package: one sentence now)
    return Path(value)


def states(monitor: Any, doctor: Any) -> dict[str, Any]:
    """What a framework's checkpoint keeps of a callback: the Monitor's and the doctor's
    ``state_dict()`` (``None`` for an absent one), as tensors and plain types only
    (:func:`plain`), so that ``torch.load(weights_only=True)`` reads it back."""
    return {"monitor": None if monitor is None else plain(monitor.state_dict(), "the Monitor's state"),
            "doctor": None if doctor is None else plain(doctor.state_dict(), "the stall doctor's state")}


def load_states(monitor: Any, doctor: Any, state: Any, source: str = "TrainlabCallback: the saved state") -> None:
    """Take back what :func:`states` saved (a part with no taker, or none saved, is left out).

    Anything that is not such a state is a :class:`~trainlab.errors.ConfigError` whose one
    sentence begins with ``source`` (e.g. the file's path) and names the part at fault; then
    neither part has taken anything (a part already loaded is put back)."""
    if not isinstance(state, Mapping):
        raise ConfigError(f"{source} holds a {type(state).__name__}, not a callback state (a dict with 'monitor'"
                          " and 'doctor' entries)")
    if "monitor" not in state and "doctor" not in state:
        raise ConfigError(f"{source} holds a dict without 'monitor' or 'doctor' entries (keys {sorted(map(str, state))}),"
                          " not a callback state")
    parts = [(name, part, state.get(key)) for name, key, part in
             (("Monitor", "monitor", monitor), ("stall doctor", "doctor", doctor))]
    taken: list[tuple[Any, Any]] = []  # (part, its state before) to put back on a failure
    try:
        for name, part, saved in parts:
            if part is None or saved is None:
                continue
            if not isinstance(saved, Mapping):
                raise ConfigError(f"{source} holds a state the {name} cannot load: its part is a"
                                  f" {type(saved).__name__}, not a dict")
            taken.append((part, part.state_dict()))
            try:
                part.load_state_dict(saved)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
                reason = " ".join(f"{type(e).__name__}: {e}".split())
                raise ConfigError(f"{source} holds a state the {name} cannot load ({reason})") from None
    except ConfigError:
        for part, before in reversed(taken):
            part.load_state_dict(before)
        raise


def check_model(monitor: Any, model: Any, source: str) -> None:
    """Refuse, in one sentence beginning with ``source``, a Monitor state saved for another
    model: parameters kept for ``update_ratio`` whose names or shapes differ from ``model``'s
    trainable ones, or a warm-start vector (``sharpness``, ``stability``) of another length.
    A resumed callback would otherwise read on the wrong parameters without a word."""
    if monitor is None or model is None:
        return
    state = monitor.state_dict()
    own = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    previous = state.get("previous")
    if previous is not None:
        kept = {name: tuple(t.shape) for name, t in previous.items()}
        foreign = next((name for name in kept if name not in own), None)
        if foreign is not None:
            raise ConfigError(f"{source} holds a Monitor state saved for another model: it keeps parameter"
                              f" {foreign!r}, which {type(model).__name__} does not have; resume with the model it"
                              " was saved for, or start without that state")
        for name, shape in own.items():
            if kept.get(name) != shape:
                found = "no value" if name not in kept else f"shape {kept[name]}"
                raise ConfigError(f"{source} holds a Monitor state saved for another model: it keeps {found} for"
                                  f" parameter {name!r}, of shape {shape} in {type(model).__name__}; resume with the"
                                  " model it was saved for, or start without that state")
    size = sum(math.prod(shape) for shape in own.values())
    for name, saved in (state.get("instruments") or {}).items():
        vector = saved.get("vector") if isinstance(saved, Mapping) else None
        if isinstance(vector, torch.Tensor) and vector.numel() != size:
            raise ConfigError(f"{source} holds a Monitor state saved for another model: the {name!r} instrument's"
                              f" vector has {vector.numel():,} entries, the model {size:,} trainable parameters;"
                              " resume with the model it was saved for, or start without that state")


def scalars(readings: Iterable[Any]) -> dict[str, float]:
    """One scalar per instrument: ``{"trainlab/<instrument>": value}`` for readings (a
    :class:`~trainlab.instruments.Reading` or its ``to_dict()``), finite values only."""
    out = {}
    for r in readings:
        name, value = (r["instrument"], r["value"]) if isinstance(r, dict) else (r.instrument, r.value)
        if value is not None and math.isfinite(float(value)):
            out[f"{PREFIX}/{name}"] = float(value)
    return out


#: The numeric fields of a doctor event that are logged as scalars (``trainlab/doctor/<field>``).
EVENT_FIELDS = ("loss", "grad_norm", "lambda_max", "lambda_min", "lr_before", "lr_after", "loss_after")


def event_scalars(event: dict[str, Any]) -> dict[str, float]:
    """A doctor event as scalars: ``trainlab/doctor/event`` = 1 (the update it happened at),
    ``trainlab/doctor/applied`` = 1 or 0, and each finite numeric field of :data:`EVENT_FIELDS`."""
    out = {f"{PREFIX}/doctor/event": 1.0, f"{PREFIX}/doctor/applied": float(bool(event.get("applied")))}
    for key in EVENT_FIELDS:
        value = event.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{PREFIX}/doctor/{key}"] = float(value)
    return out


def event_text(event: dict[str, Any]) -> str:
    """A doctor event in one line: verdict, the reading treated, the action or message."""
    parts = [f"stall: {event.get('verdict', '?')}"]
    if event.get("reading"):
        parts.append(f"reading {event['reading']}")
    parts.append(str(event.get("action") or event.get("message") or ""))
    return "; ".join(p for p in parts if p)


__all__ = ["EVENT_FIELDS", "PLAIN", "PREFIX", "check_model", "event_scalars", "event_text", "load_states", "plain",
           "require", "scalars", "states", "tensorboard_dir"]
