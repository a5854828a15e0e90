"""Data sets as torch ``TensorDataset`` pairs: bundled scikit-learn sets and user files."""

from trainlab.data.datasets import BUNDLED, load, load_digits, num_classes
from trainlab.data.split import stratified_split
from trainlab.data.standardizer import Standardizer

__all__ = ["BUNDLED", "Standardizer", "load", "load_digits", "num_classes", "stratified_split"]
