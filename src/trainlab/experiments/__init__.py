"""The lecture's demonstrations, one module per part: ``run(config) -> Result``, with each
claim of the lecture checked against this run's numbers."""

from trainlab.experiments import (adaptive_lr, batch_size, classification, critical_points, momentum, normalization,
                                  sharpness)
from trainlab.experiments.result import Claim, Config, Result, Table

#: In the report's order: the edge of stability (sharpness) before adaptive_lr, whose warm-up part reads λ_max
#: against 2/η.
EXPERIMENTS = {m.NAME: m for m in (critical_points, batch_size, momentum, sharpness, adaptive_lr, classification,
                                   normalization)}

__all__ = ["EXPERIMENTS", "Claim", "Config", "Result", "Table"]
