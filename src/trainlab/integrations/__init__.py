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
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

from trainlab.errors import ConfigError

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
    ``state_dict()`` (``None`` for an absent one)."""
    return {"monitor": None if monitor is None else monitor.state_dict(),
            "doctor": None if doctor is None else doctor.state_dict()}


def load_states(monitor: Any, doctor: Any, state: Any) -> None:
    """Take back what :func:`states` saved (a part with no taker, or none saved, is left out)."""
    for part, saved in ((monitor, state.get("monitor")), (doctor, state.get("doctor"))):
        if part is not None and saved is not None:
            part.load_state_dict(saved)


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


__all__ = ["EVENT_FIELDS", "PREFIX", "event_scalars", "event_text", "load_states", "require", "scalars",
           "states", "tensorboard_dir"]
