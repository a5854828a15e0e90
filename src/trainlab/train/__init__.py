"""Training: the mini-batch :class:`Trainer`, its callbacks, and runs from a config."""

from trainlab.train.callbacks import Callback
from trainlab.train.config import RunConfig
from trainlab.train.doctor import StallDoctor
from trainlab.train.trainer import Trainer
from trainlab.train.watch import Watch, watch

__all__ = ["Callback", "RunConfig", "StallDoctor", "Trainer", "Watch", "watch"]
