"""Readings during training: gradient norm, update ratio, units, sharpness, stability, noise
scale — named instruments read every few updates by the :class:`Monitor`, on a fixed bounded
sample of the training data and with no side effects on the model.

Sits between :mod:`trainlab.curvature` and :mod:`trainlab.train`: it imports curvature,
optim, nn, data, state and errors, never train, cli or report.
"""

from trainlab.instruments.alpha import Alpha
from trainlab.instruments.gradients import GradNorm, UpdateRatio
from trainlab.instruments.monitor import PRESETS, Context, Instrument, Monitor, Reading, preset
from trainlab.instruments.noise import GSNR, NoiseScale
from trainlab.instruments.sharpness import HessianTrace, Sharpness, Stability
from trainlab.instruments.units import Units

__all__ = ["Alpha", "GSNR", "PRESETS", "Context", "GradNorm", "HessianTrace", "Instrument", "Monitor", "NoiseScale",
           "Reading", "Sharpness", "Stability", "UpdateRatio", "Units", "preset"]
