"""Callbacks the training tests plug into a Trainer."""

import os
import signal

from trainlab.train import Callback


class InterruptAt(Callback):
    """Sends this process a real SIGINT (Ctrl-C) after update ``step``."""

    def __init__(self, step):
        self.at = step

    def on_step_end(self, trainer, record):
        if record["step"] == self.at:
            os.kill(os.getpid(), signal.SIGINT)


class Counter(Callback):
    """Counts the updates it sees; its count is saved in the checkpoint and restored on resume."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, trainer, record):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]
