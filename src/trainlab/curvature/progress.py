"""A progress bar counting Hessian-vector products, for analyses that may run long.

The bar appears only once a call has run :data:`DELAY` seconds (so quick calls print
nothing), disappears when it ends (``leave=False``), and is shown by rank 0 alone under
``torch.distributed``. ``progress=False`` on any analysis turns it off.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from trainlab import distributed as dist

#: Seconds a call runs before its bar appears.
DELAY = 2.0


@contextlib.contextmanager
def counting(op: Any, total: int | None, desc: str, enabled: bool = True) -> Iterator[None]:
    """While inside, a bar of ``total`` steps (``None``: a plain count) follows ``op.n_hvp``.

    The operator's ``matvec`` and ``matmat`` are wrapped on the instance for the duration,
    because every analysis reaches the products through one of them, whichever path
    (Lanczos, quadrature, dense blocks) makes them; the bar reads the operator's own count, so
    nothing is counted twice when one calls the other.

    Parameters: ``op`` a :class:`~trainlab.curvature.operator.HessianOperator`; ``total`` the
    products expected (``None``: unknown); ``desc`` the bar's label; ``enabled`` (True) — False
    shows nothing. Cost: none beyond the bar.
    """
    if not enabled or (getattr(op, "distributed", False) and dist.rank(getattr(op, "group", None)) != 0):
        yield
        return
    bar = tqdm(total=total, desc=desc, unit="hvp", delay=DELAY, leave=False, dynamic_ncols=True)
    start = op.n_hvp

    def counted(product: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out = product(*args, **kwargs)
            bar.update(op.n_hvp - start - bar.n)
            return out
        return wrapper

    op.matvec, op.matmat = counted(op.matvec), counted(op.matmat)
    try:
        yield
    finally:
        del op.matvec, op.matmat  # the class's methods show through again
        bar.close()
