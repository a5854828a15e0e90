"""Neural-network parts: model builders, classification losses, feature and batch
normalisation, and error-surface slices."""

from trainlab.data.standardizer import Standardizer
from trainlab.nn import surface
from trainlab.nn.batchnorm import BatchNorm1d, BatchNorm2d
from trainlab.nn.losses import cross_entropy, log_softmax, mse_onehot, softmax
from trainlab.nn.models import ACTIVATIONS, Reshape, mlp, small_cnn

__all__ = ["ACTIVATIONS", "BatchNorm1d", "BatchNorm2d", "Reshape", "Standardizer", "cross_entropy", "log_softmax",
           "mlp", "mse_onehot", "small_cnn", "softmax", "surface"]
