"""The lecture's optimizers as ``torch.optim.Optimizer`` subclasses, and learning-rate
schedules. Each optimizer has a readable single-tensor path (``foreach=False``) and a
multi-tensor path (``foreach=True``); ``foreach=None`` picks the faster for the device:
multi-tensor on GPUs, single-tensor on CPU (as torch.optim does)."""

from trainlab.optim import schedules
from trainlab.optim.adagrad import Adagrad
from trainlab.optim.adam import Adam
from trainlab.optim.rmsprop import RMSProp
from trainlab.optim.sgd import SGD

__all__ = ["SGD", "Adagrad", "Adam", "RMSProp", "schedules"]
