"""Atomic writes: a crash or Ctrl-C mid-write never leaves a torn file behind.

Each file is written to a temporary sibling, flushed to disk (``fsync``) and then moved
over the target with :func:`os.replace`, which is atomic on POSIX and Windows: a reader
sees either the previous complete file or the new complete one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, IO

import torch


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically."""
    _atomic(Path(path), lambda f: torch.save(obj, f))


def load(path: str | Path, map_location: str | torch.device | None = None) -> dict[str, Any]:
    """A checkpoint written by :func:`save` (tensors and plain containers only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


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
