"""Extreme eigenpairs of a symmetric operator: thick-restart Lanczos with full
reorthogonalisation (Wu & Simon 2000).

One cycle grows an orthonormal basis ``V = [v₀ … v_{m−1}]`` of the Krylov space by
``w = H v_j``, orthogonalising ``w`` twice against every basis vector (classical Gram–Schmidt
with re-orthogonalisation), so that ``T = Vᵀ H V`` is known entry by entry from the
coefficients. Its eigenpairs ``(θ, y)`` give Ritz pairs ``(θ, x = V y)`` whose residuals cost
nothing more::

    H V = V T + β v_m e_mᵀ   ⇒   ‖H x − θ x‖ = |β| · |y_m|

The coefficients and norms are summed in float64 whatever the vectors' dtype (a float32 dot
product over millions of terms is wrong in the fourth digit), and a residual reported adds the
rounding of the returned vector, ``ε·max|θ|``: it bounds what ``‖H x − θ x‖`` of that vector is.
A pair has converged when that residual is ``≤ tol · max|θ|``. A restart keeps the wanted
Ritz vectors (plus a few more) and the last Lanczos vector, with ``T`` becoming diagonal plus
one coupling row — nothing is recomputed. Vectors live on the operator's device in its
dtype; the small projected problem is solved in float64 on the CPU.

The most negative eigenvalues of a network's Hessian are the hard case: they sit just below
a dense cluster near zero, far from a top eigenvalue often 100× larger. Restarting keeps the
good directions found so far while the basis stays small, so each cycle refines them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from trainlab.errors import ConfigError

WHICH = ("largest", "smallest", "both")
#: Memory for the Lanczos basis; the default basis shrinks to fit (down to ``wanted + max(3, wanted/2)`` vectors).
BASIS_BYTES = 2**26


@dataclass
class LanczosResult:
    """Ritz pairs found by :func:`lanczos`: ``values`` (descending), ``vectors`` (rows),
    ``residuals`` (bounds on ``‖H x − θ x‖`` of the vectors as returned, rounding included),
    ``converged`` flags, and ``n_matvec`` products used."""

    values: torch.Tensor  # (k,) float64, descending
    vectors: torch.Tensor  # (k, n), operator dtype and device
    residuals: torch.Tensor  # (k,) float64, a bound on ‖H x − θ x‖ of the returned x (see _Ritz)
    converged: torch.Tensor  # (k,) bool
    n_matvec: int


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, k: int = 10, which: str = "largest",
            tol: float = 1e-6, max_matvecs: int | None = None, basis_size: int | None = None, seed: int = 0,
            device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64,
            sync: Callable[[torch.Tensor], torch.Tensor] | None = None,
            release: Callable[[], None] | None = None, basis_bytes: int = BASIS_BYTES) -> LanczosResult:
    """The ``k`` largest, ``k`` smallest, or both (``k`` of each), eigenpairs of the symmetric
    operator ``v ↦ matvec(v)`` on ``R^n``.

    Parameters:
        matvec: ``v ↦ H v`` for a flat ``(n,)`` vector; n: the dimension.
        k: pairs wanted at each end asked for (10); more than ``n`` in all gives all ``n``.
        which: ``"largest"`` (default), ``"smallest"`` or ``"both"``.
        tol: converged when the residual is ``≤ tol · max|θ|`` (1e-6); at least ``2ε`` of ``dtype``
            (float32: 2.4e-7), the floor of a residual that vectors in that dtype can show.
        max_matvecs: at most this many products (``None``: 5,000); then the pairs found so far
            are returned, unconverged ones flagged.
        basis_size: ``None`` (default) 300 vectors, fewer when ``n`` is small or the basis would
            exceed ``basis_bytes`` (:data:`BASIS_BYTES`, 64 MiB), but never fewer than
            ``wanted + max(3, wanted/2)``: a restart keeps the wanted Ritz vectors and about half
            the rest, so even that small a basis costs few extra products (ResNet-18 on 128 images,
            top 5 to 1e-3: 22 products with 8 vectors, 21 with 10, 20 with 22 — and 0.5 GB less
            memory than 22). Convergence is checked every few products (every product when
            ``n ≥ 10 m³``, where a product costs more than the check), so an easy problem stops
            long before the basis is full.
        seed: seed of the random start vector (0); device, dtype: where the vectors live.
        sync: applied to every random vector drawn (under ``torch.distributed``: a broadcast from
            rank 0, so that all ranks hold the same basis; every other step is deterministic
            given the same products). ``None``: identity.
        basis_bytes: the default basis's memory bound (above).
        release: called once no product is needed any more, before the Ritz vectors are formed
            (an operator frees its kept graph there, so the two never take memory together).

    Returns:
        :class:`LanczosResult` — ``values`` descending (float64), ``vectors`` (rows), ``residuals``,
        ``converged``, ``n_matvec``. Fewer than wanted when ``max_matvecs`` ran out first.

    Cost:
        ``n_matvec`` products (≤ ``max_matvecs``; ``n`` when all ``n`` pairs are wanted), plus
        ``O(m·n)`` work per product for the reorthogonalisation.
    """
    sync = sync or (lambda v: v)
    check_request(k, which)
    check_tol(tol, dtype)
    wanted = min(n, k * (2 if which == "both" else 1))
    eps = torch.finfo(dtype).eps
    itemsize = torch.empty((), dtype=dtype).element_size()
    m = min(n, basis_size or max(min(300, int(basis_bytes) // (n * itemsize) - 1), wanted + max(3, wanted // 2)))
    if m <= wanted and m < n:
        raise ConfigError(f"basis_size={basis_size} must exceed the {wanted} eigenpairs wanted")
    keep = min(m - 1, wanted + max(1, min(max(wanted // 2, 8), (m - wanted) // 2)))
    # convergence is checked every step where a product costs more than the eigh of T (n ≫ m³),
    # else every few steps
    every_step = n >= 10 * m**3
    max_matvecs = max_matvecs or 5000
    gen = torch.Generator().manual_seed(seed)

    V = torch.zeros(m + 1, n, device=device, dtype=dtype)
    T = torch.zeros(m, m, dtype=torch.float64)
    V[0] = sync(_unit(torch.randn(n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)))
    start, used = 0, 0
    while True:
        for j in range(start, m):
            w, beta, exhausted = step(matvec, V, T, j)
            used += 1
            if j + 1 < n and exhausted:
                # an invariant subspace: continue from a fresh direction, uncoupled (β = 0)
                w = sync(torch.randn(n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype))
                _orthogonalise(w, V[:j + 1])
                beta, w = 0.0, _unit(w)
                V[j + 1] = w
            else:
                torch.div(w, beta if beta > 0 else 1.0, out=V[j + 1])
            del w  # not alive through the next product
            size = j + 1
            if size == m or (size >= wanted and size % (1 if every_step else max(5, size // 20)) == 0) \
                    or used >= max_matvecs:
                ritz = _Ritz(T[:size, :size], beta, wanted, which, tol, eps)
                if ritz.done or size == n or used >= max_matvecs:
                    idx = ritz.order[torch.argsort(ritz.theta[ritz.order], descending=True)]
                    if release is not None:
                        release()
                    vectors = ritz.Y[:, idx].T.to(device=device, dtype=dtype) @ V[:size]
                    return LanczosResult(ritz.theta[idx], vectors, ritz.residuals[idx],
                                         ritz.residuals[idx] <= ritz.limit, used)
        # thick restart: keep the wanted Ritz vectors and their nearest neighbours in the spectrum
        kept = _wanted(ritz.theta, keep, which)
        _rotate(V, ritz.Y[:, kept].T.to(device=device, dtype=dtype), m)
        V[keep] = V[m]
        T.zero_()
        T[range(keep), range(keep)] = ritz.theta[kept]
        start = keep


def _rotate(V: torch.Tensor, Q: torch.Tensor, m: int, columns: int = 2**18) -> None:
    """``V[:keep] = Q V[:m]`` in place (``Q`` is ``keep × m``), a block of columns at a time, so
    the restart holds no second basis."""
    for start in range(0, V.shape[1], columns):
        block = V[:m, start:start + columns]
        V[:len(Q), start:start + columns] = Q @ block


def check_tol(tol: float, dtype: torch.dtype) -> None:
    """Raise ConfigError unless ``tol`` is a number of at least ``2ε`` of ``dtype``: a vector
    stored in ``dtype`` carries a residual of up to ``ε·‖H‖`` from its rounding alone, so a
    smaller ``tol`` could never be met (and would be claimed where it was not). Cost: none."""
    floor = 2 * torch.finfo(dtype).eps
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= floor or not math.isfinite(tol):
        raise ConfigError(f"tol={tol!r} is not allowed; expected a number ≥ {floor:.1e}: a {str(dtype).removeprefix('torch.')}"
                          f" vector's residual is known only to ~ε·max|λ| (ε = {floor / 2:.1e})"
                          + (", so analyse a float64 copy for a tighter tol" if dtype != torch.float64 else ""))


def check_request(k: int, which: str) -> None:
    """Raise ConfigError unless ``which`` is one of :data:`WHICH` and ``k`` a positive integer. Cost: none."""
    if which not in WHICH:
        raise ConfigError(f"which={which!r} is not allowed; use one of: {', '.join(WHICH)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k={k!r} is not allowed; expected a positive integer")


class _Ritz:
    """Ritz pairs of the projected matrix ``T`` and bounds on their residuals.

    The Lanczos residual ``|β y_last|`` is that of ``x = V y`` in exact arithmetic; the vector
    returned is ``x`` rounded to the basis' dtype, ``x̃ = x + δ`` with ``‖δ‖ ≤ u‖x‖`` (``u = ε/2``),
    so ``‖H x̃ − θ x̃‖ ≤ |β y_last| + (‖H‖ + |θ|)·u ≤ |β y_last| + ε·max|θ|`` (with ``max|θ|``
    standing for ``‖H‖``). That floor is added: a residual reported is one the returned vector
    has, and ``tol`` must exceed ``2ε`` (:func:`check_tol`)."""

    def __init__(self, T: torch.Tensor, beta: float, wanted: int, which: str, tol: float, eps: float):
        self.theta, self.Y = torch.linalg.eigh(T)
        scale = max(float(self.theta.abs().max()), 1e-300)
        self.residuals = (beta * self.Y[-1]).abs() + eps * scale
        self.order = _wanted(self.theta, wanted, which)
        self.limit = tol * scale
        self.done = bool((self.residuals[self.order] <= self.limit).all())


def _wanted(theta: torch.Tensor, count: int, which: str) -> torch.Tensor:
    """Indices of the ``count`` Ritz values wanted: from the top, the bottom, or both ends."""
    order = torch.argsort(theta)
    if which == "largest":
        return order[-count:]
    if which == "smallest":
        return order[:count]
    low, high = order[:math.ceil(count / 2)], order[-(count // 2):] if count // 2 else order[:0]
    return torch.unique(torch.cat([low, high]))


def step(matvec: Callable[[torch.Tensor], torch.Tensor], V: torch.Tensor, T: torch.Tensor, j: int
         ) -> tuple[torch.Tensor, float, bool]:
    """One Lanczos step from basis vector ``j``: ``w = H vⱼ`` orthogonalised against
    ``v₀ … vⱼ``, whose coefficients fill column (and row) ``j`` of ``T``. Returns ``w``, ``‖w‖``
    and whether the Krylov space is exhausted (``‖w‖`` negligible next to ``T``).

    Parameters: ``matvec``; ``V`` the ``(m+1, n)`` basis (rows ``0…j`` filled); ``T`` the
    ``(m, m)`` projected matrix, written in place; ``j`` the step. Cost: one product.
    """
    w = matvec(V[j])
    h = _orthogonalise(w, V[:j + 1]).cpu()
    T[:j + 1, j] = h
    T[j, :j + 1] = h
    beta = _norm64(w)
    return w, beta, beta <= 1e-10 * (float(T[:j + 1, :j + 1].abs().max()) or 1.0)


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove from ``w`` (in place) its components along the rows of ``basis`` — twice,
    which is enough for orthogonality to working precision — and return them (float64)."""
    h = _dot64(basis, w)
    w.addmv_(basis.T, h.to(w.dtype), alpha=-1)  # in place: no n-vector temporary
    h2 = _dot64(basis, w)
    w.addmv_(basis.T, h2.to(w.dtype), alpha=-1)
    return h + h2


#: Elements of one float64 block in :func:`_dot64` (8 MiB): the upcast never takes a basis' memory.
BLOCK = 2**20


def _dot64(rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``rows @ v`` accumulated in float64, a block of columns at a time.

    Why: a float32 dot product over ``n`` terms carries a relative error up to ``~√n·ε`` (worse
    with a sequential kernel), which at ``n = 2²²`` is ``~10⁻⁴``: the projected matrix ``T`` and
    the norms would then be wrong in the fourth digit while the vectors are right to ``ε``.
    Summed in float64 the coefficients are exact to the rounding of the stored vectors. Cost:
    the same ``O(m·n)`` work as the float32 product, with an ``8·BLOCK``-byte temporary."""
    if v.dtype == torch.float64:
        return rows @ v
    flat = rows.reshape(-1, rows.shape[-1])
    out = torch.zeros(flat.shape[0], dtype=torch.float64, device=v.device)
    columns = max(1, BLOCK // max(1, flat.shape[0]))
    for start in range(0, v.shape[-1], columns):
        out.addmv_(flat[:, start:start + columns].double(), v[start:start + columns].double())
    return out.reshape(rows.shape[:-1])


def _norm64(v: torch.Tensor) -> float:
    """``‖v‖`` accumulated in float64 (see :func:`_dot64`)."""
    return math.sqrt(max(float(_dot64(v, v)), 0.0))


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / _norm64(v)
