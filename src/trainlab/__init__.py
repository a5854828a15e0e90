"""trainlab: why won't my network train? Critical-point diagnosis and the standard
remedies (optimizers, schedules, normalisation) as drop-in PyTorch parts."""

__version__ = "0.1.0"

from trainlab import curvature, data, distributed, errors, nn, optim, train  # noqa: E402
from trainlab.curvature import diagnose, escape  # noqa: E402

__all__ = ["__version__", "curvature", "data", "diagnose", "distributed", "errors", "escape", "nn", "optim",
           "train"]
