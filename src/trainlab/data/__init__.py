"""Data sets as torch ``TensorDataset`` pairs: bundled scikit-learn sets and user files."""

from trainlab.data.datasets import BUNDLED, load, load_digits, num_classes
from trainlab.data.split import standardize, stratified_split

__all__ = ["BUNDLED", "load", "load_digits", "num_classes", "standardize", "stratified_split"]
