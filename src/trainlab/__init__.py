"""trainlab: why won't my network train? Critical-point diagnosis and the standard
remedies (optimizers, schedules, normalisation) as drop-in PyTorch parts.

The submodules load on first use (``tl.curvature``, ``tl.data``, ``tl.diagnose``, ...), so
``import trainlab`` and ``trainlab --help`` cost little more than importing PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from trainlab import errors  # noqa: E402  (no dependencies; every layer raises these)

if TYPE_CHECKING:  # static tools see the names the lazy loader provides
    from trainlab import curvature, data, distributed, nn, optim, train
    from trainlab.curvature import diagnose, escape
    from trainlab.train import watch

#: Public submodules, imported on first attribute access (PEP 562).
_SUBMODULES = ("curvature", "data", "distributed", "nn", "optim", "train")
#: Public functions re-exported from a submodule, with that submodule.
_FUNCTIONS = {"diagnose": "trainlab.curvature", "escape": "trainlab.curvature", "watch": "trainlab.train"}

__all__ = ["__version__", "curvature", "data", "diagnose", "distributed", "errors", "escape", "nn", "optim",
           "train", "watch"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"trainlab.{name}")  # the import also binds it on this package
    if name in _FUNCTIONS:
        value = getattr(importlib.import_module(_FUNCTIONS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'trainlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
