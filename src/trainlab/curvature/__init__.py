"""Critical-point analysis: gradient, Hessian-vector products, dense Hessians, Lanczos
eigenpairs, spectral density and trace, a verdict, and escape from saddles.

Every function takes any ``nn.Module``, a ``loss_fn(outputs, targets)`` that averages over
its batch, and ``data`` — one ``(x, y)`` batch or an iterable of batches; the loss analysed
is their sample-weighted mean. Analysis runs in ``eval()`` mode unless ``mode="train"``.
"""

from trainlab.curvature.critical import Diagnosis, diagnose, verdict
from trainlab.curvature.density import Density, Trace, density, trace
from trainlab.curvature.eigs import Eigs, eigs
from trainlab.curvature.escape import Escape, escape
from trainlab.curvature.operator import HessianOperator, analysis_mode
from trainlab.curvature.products import gradient, hessian, hvp

__all__ = ["Density", "Diagnosis", "Eigs", "Escape", "HessianOperator", "Trace", "analysis_mode", "density",
           "diagnose", "eigs", "escape", "gradient", "hessian", "hvp", "trace", "verdict"]
