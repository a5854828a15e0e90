"""trainlab: why won't my network train? Critical-point diagnosis and the standard
remedies (optimizers, schedules, normalisation) as drop-in PyTorch parts."""

__version__ = "0.1.0"

from trainlab import data, errors, nn, optim, train  # noqa: E402

__all__ = ["__version__", "data", "errors", "nn", "optim", "train"]
