"""Neural-network parts: model builders and classification losses."""

from trainlab.nn.losses import cross_entropy, mse_onehot, softmax
from trainlab.nn.models import ACTIVATIONS, Reshape, mlp, small_cnn

__all__ = ["ACTIVATIONS", "Reshape", "cross_entropy", "mlp", "mse_onehot", "small_cnn", "softmax"]
