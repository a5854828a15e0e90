"""Critical-point analysis: gradient, Hessian-vector products, dense Hessians, Lanczos
eigenpairs, spectral density and trace, a verdict, and escape from saddles.

Every function takes any ``nn.Module``, a ``loss_fn(outputs, targets)`` that averages over
its batch, and ``data`` — an ``(x, y)`` batch, a list of batches, a DataLoader or a Dataset;
the loss analysed is their sample-weighted mean. Analysis runs in ``eval()`` mode unless
``mode="train"``, and leaves the model exactly as it was (``escape`` alone moves the
parameters, and only when it accepts a step).

Options every analysis takes (keyword only): ``batch_loss=(model, batch) -> mean loss`` for
batches of any form (then ``loss_fn`` may be ``None``), ``max_samples`` (only the first
samples of ``data``), ``max_graph_bytes`` (bound on the kept autograd graph, 2 GiB),
``params`` (the Hessian block of some parameters, the others held fixed:
:mod:`~trainlab.curvature.selection`); and ``eigs``, ``density``, ``trace``, ``diagnose`` also
``max_hvp`` (a budget of Hessian-vector products), ``progress`` (a progress bar after 2 s;
``False`` turns it off) and ``operator`` (``"hessian"``, or the Gauss–Newton ``"ggn"`` and the
empirical Fisher ``"fisher"``: :mod:`~trainlab.curvature.gauss_newton`).

Cost is counted in Hessian-vector products (each about two gradients): ``hvp`` one per
vector, ``eigs`` a few times ``k``, ``density`` ``probes × steps``, ``trace`` ``samples``,
``diagnose`` ``n`` (exact path) or the extremes plus the density, ``hessian`` ``n``.
"""

from trainlab.curvature.critical import Diagnosis, diagnose, verdict
from trainlab.curvature.density import Density, Trace, density, trace
from trainlab.curvature.eigs import Eigs, eigs
from trainlab.curvature.escape import Escape, escape
from trainlab.curvature.gauss_newton import FisherOperator, GGNOperator
from trainlab.curvature.layerwise import LayerRow, Layerwise, layer_groups, layerwise
from trainlab.curvature.operator import HessianOperator, analysis_mode
from trainlab.curvature.products import gradient, hessian, hvp

__all__ = ["Density", "Diagnosis", "Eigs", "Escape", "FisherOperator", "GGNOperator", "HessianOperator", "LayerRow",
           "Layerwise", "layer_groups", "layerwise", "Trace", "analysis_mode", "density",
           "diagnose", "eigs", "escape", "gradient", "hessian", "hvp", "trace", "verdict"]
