"""Curvature readings during training: sharpness, stability of the update, Hessian trace.

Every reading is taken on the Monitor's fixed bounded sample (``ctx.batch``, with
``ctx.batch_loss`` when given), inside :func:`trainlab.curvature.analysis_mode` — so the
model, its buffers, flags, ``.grad`` and the random states are left as they were.

**Warm-started tracking.** Between two readings a few updates move θ only a little, so the
top eigenvector ``u`` of ``H(θ)`` barely turns. Each reading therefore starts Lanczos from
the previous reading's top Ritz vector ``x₀`` instead of a random vector. Lanczos builds
an orthonormal basis ``V_j`` of the Krylov space ``K_j(H, x₀) = span{x₀, H x₀, …, H^{j−1} x₀}``
(every new ``H v`` orthogonalised twice against the whole basis, so ``T = V_jᵀ H V_j`` is
known from the coefficients) and takes the largest Ritz pair ``(θ, x = V_j y)`` of ``T``.
Its residual costs nothing more::

    H V_j = V_j T + β v_j e_jᵀ   ⇒   r = ‖H x − θ x‖ = |β| · |y_last|

and bounds the error: some eigenvalue lies in ``[θ − r, θ + r]``, and within ``r²/gap``
once ``θ`` is separated from the rest of the spectrum by ``gap`` (Kato–Temple); a Ritz value
never exceeds ``λ_max``. The reading stops as soon as the estimate
``min(r, r²/(θ₁ − θ₂)) ≤ tol · |θ₁|``, with the gap estimated by the top two Ritz values —
an estimate, not a bound (``θ₂ ≤ λ₂``, so the gap can look wider than it is); the benchmark
checks it against a cold start. With ``x₀`` at angle ``φ`` to
``u``, ``θ`` after ``j`` steps is off by ``∝ tan²φ / T_{j−1}(1 + 2γ)²`` (Kaniel–Paige;
``T`` the Chebyshev polynomial, ``γ`` the relative gap), so a start that is nearly ``u``
needs only a handful of products. When the basis is full (``basis_size``) Lanczos restarts
from the current top Ritz vector; a Krylov space that closes early (an invariant subspace)
continues from a fresh random direction. The first reading (no previous vector, or a model
whose size changed) starts from a random vector drawn with ``ctx.seed``.

What a warm start cannot see: an eigenvalue that overtakes the tracked one along a
direction nearly orthogonal to ``x₀``. ``x₀`` is then close to an eigenvector (the old top,
now second), its residual is small, and the reading stops below ``λ_max`` — by the gap,
which grows while the two separate (measured on a 300 × 300 test matrix whose top pair
crosses with eigenvectors turning 10⁻⁵ rad per reading: 30 % low after 15 readings).
So every ``refresh``-th reading (10) starts cold, from a random vector, under which the
whole spectrum is in view; a crossing is caught within ``refresh`` readings.

Cost of a reading: one gradient with its graph kept (:class:`trainlab.curvature.HessianOperator`)
and ``n_hvp`` Hessian-vector products (about two gradients each), ``≤ max_hvp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from trainlab.curvature import HessianOperator, analysis_mode
from trainlab.curvature.density import trace_of
from trainlab.curvature.lanczos import _orthogonalise, _unit, step
from trainlab.errors import ConfigError

#: Memory for a tracking Lanczos basis; the basis shrinks below ``basis_size`` to fit.
BASIS_BYTES = 256 * 2**20


@dataclass
class TopPair:
    """The largest eigenpair found: ``value`` (float), ``vector`` (unit, flat), ``residual``
    ``‖H x − θ x‖``, ``error`` the estimated eigenvalue error ``min(r, r²/gap)``, ``converged``
    (``error ≤ tol·|value|``), ``n_matvec`` products used."""

    value: float
    vector: torch.Tensor
    residual: float
    error: float
    converged: bool
    n_matvec: int


def top_eigenpair(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, start: torch.Tensor | None = None,
                  tol: float = 1e-4, max_matvecs: int = 200, basis_size: int = 60, seed: int = 0,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> TopPair:
    """The largest (algebraic) eigenpair of the symmetric operator ``v ↦ matvec(v)`` on ``R^n``
    by Lanczos from ``start`` (a warm start; ``None``: a random vector from ``seed``), with full
    reorthogonalisation, stopping when ``min(r, r²/gap) ≤ tol·|θ|`` with ``r = ‖H x − θ x‖`` and
    ``gap`` the distance to the next Ritz value (module docstring for the math).

    Parameters: ``matvec``; ``n`` the dimension; ``start`` an ``(n,)`` vector or ``None``;
    ``tol`` (1e-4); ``max_matvecs`` (200); ``basis_size`` (60; restart from the top Ritz vector
    when full); ``seed`` for random vectors; ``device``, ``dtype`` of the vectors ``matvec`` takes
    and of the returned vector. The basis is kept in float64 where its ``(basis_size + 1) · n``
    numbers fit :data:`BASIS_BYTES` as float64 (else in ``dtype``).
    Returns :class:`TopPair`. Cost: ``n_matvec ≤ max_matvecs`` products.
    """
    gen = torch.Generator().manual_seed(seed)
    m = max(2, min(basis_size, n))
    # the basis in float64 where it fits BASIS_BYTES: its coefficients then need no upcast per step
    # (between cheap products the upcasts cost as much as the products), and its vectors no rounding
    wide = dtype != torch.float64 and (m + 1) * n * 8 <= BASIS_BYTES and not dtype.is_complex
    basis_dtype = torch.float64 if wide else dtype
    if wide:
        product = matvec

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return product(v.to(dtype)).to(torch.float64)

    def random() -> torch.Tensor:
        return torch.randn(n, generator=gen, dtype=torch.float64).to(device=device, dtype=basis_dtype)

    V = torch.empty(m + 1, n, device=device, dtype=basis_dtype)  # each row is written before it is read
    T = torch.zeros(m, m, dtype=torch.float64)
    x = start.reshape(-1).to(device=device, dtype=basis_dtype) if start is not None else random()
    if not bool(torch.isfinite(x).all()) or float(x.norm()) == 0.0:
        x = random()
    V[0] = _unit(x)
    # a Krylov space that closes is exact; it holds the top of the spectrum when it grew from
    # a random vector (almost surely), not necessarily when it grew from a warm start
    seen_random = start is None
    used, j = 0, 0
    while True:
        w, beta, exhausted = step(matvec, V, T, j)
        used += 1
        size = j + 1
        theta, Y = torch.linalg.eigh(T[:size, :size])
        value, y = float(theta[-1]), Y[:, -1]
        residual = 0.0 if exhausted else abs(beta * float(y[-1]))
        gap = float(theta[-1] - theta[-2]) if size > 1 else 0.0
        error = min(residual, residual ** 2 / gap) if gap > 0 else residual
        converged = error <= tol * max(abs(value), 1e-300)
        if (converged and not (exhausted and not seen_random)) or used >= max_matvecs or size == n:
            vector = _unit(y.to(device=device, dtype=basis_dtype) @ V[:size])
            return TopPair(value, vector.to(dtype), residual, error, bool(converged), used)
        if exhausted:
            # an invariant subspace: its top Ritz value is exact for it, but the top of the
            # spectrum may lie outside; continue from a fresh direction, uncoupled
            seen_random = True
            w = random()
            _orthogonalise(w, V[:size])
            beta = float(w.norm())
        if size == m:  # restart from the top Ritz vector
            x = y.to(device=device, dtype=basis_dtype) @ V[:size]
            T.zero_()
            V[0] = _unit(x)
            j = 0
            continue
        V[j + 1] = w / beta
        j += 1


def _basis_size(basis_size: int, n: int, dtype: torch.dtype) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(4, min(basis_size, BASIS_BYTES // max(n * itemsize, 1) - 1))


def _check_every(every: Any) -> int | None:
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(f"every={every!r} is not allowed; expected an integer >= 1 (updates between readings)"
                          " or None (the Monitor's)")
    return every


def _check_tracking(tol: Any, max_hvp: Any, refresh: Any) -> None:
    if refresh is not None and (isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 1):
        raise ConfigError(f"refresh={refresh!r} is not allowed; expected an integer >= 1 (a cold start every"
                          " refresh readings) or None (never)")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ConfigError(f"tol={tol!r} is not allowed; expected a number in (0, 1) (the estimated error relative to λ)")
    if isinstance(max_hvp, bool) or not isinstance(max_hvp, int) or max_hvp < 1:
        raise ConfigError(f"max_hvp={max_hvp!r} is not allowed; expected an integer >= 1")


class _Operators:
    """Builds each reading's :class:`HessianOperator`. The first reading checks the data and
    the loss (a mean, finite) and measures the gradient graph against the memory bound; the
    sample is fixed, so later readings reuse that decision and skip both (each costs a few
    gradients, more than a warm-started reading's products)."""

    def __init__(self) -> None:
        self.keep_graph: bool | None = None

    def build(self, ctx: Any) -> HessianOperator:
        """The Hessian of the loss on the sample; call inside the reading's :func:`analysis_mode`."""
        op = HessianOperator(ctx.model, ctx.loss_fn, ctx.batch, keep_graph=self.keep_graph,
                             batch_loss=getattr(ctx, "batch_loss", None), check=self.keep_graph is None)
        if getattr(ctx, "mode", "eval") == "train":
            op.check_determinism()
        return op

    def done(self, op: HessianOperator) -> None:
        """Remember the first successful reading's decision."""
        self.keep_graph = op.keep_graph


class _Tracker:
    """Warm-start state of :class:`Sharpness` and :class:`Stability`: the previous reading's
    top Ritz vector, the readings made, and how to build the operator (:class:`_Operators`)."""

    def __init__(self, tol: float, max_hvp: int, basis_size: int, refresh: int | None):
        _check_tracking(tol, max_hvp, refresh)
        self.tol, self.max_hvp, self.basis_size, self.refresh = float(tol), max_hvp, basis_size, refresh
        self.vector: torch.Tensor | None = None
        self.readings = 0
        self.operators = _Operators()

    def track(self, matvec: Callable[[torch.Tensor], torch.Tensor], n: int, seed: int, device: torch.device,
              dtype: torch.dtype) -> tuple[TopPair, bool]:
        """The top pair, warm-started unless there is no usable vector or a refresh is due."""
        due = self.refresh is not None and self.readings % self.refresh == 0
        start = self.vector if self.vector is not None and self.vector.numel() == n and not due else None
        pair = top_eigenpair(matvec, n, start, self.tol, self.max_hvp, _basis_size(self.basis_size, n, dtype),
                             seed + self.readings, device, dtype)
        if math.isfinite(pair.value):
            self.vector = pair.vector.detach().clone()
            self.readings += 1
        return pair, start is not None

    def state_dict(self) -> dict:
        return {"vector": None if self.vector is None else self.vector.detach().cpu().clone(),
                "readings": self.readings}

    def load_state_dict(self, state: dict) -> None:
        vector = state.get("vector")
        self.vector = None if vector is None else torch.as_tensor(vector).detach().clone()
        self.readings = int(state.get("readings", 0))


def _non_finite(op: HessianOperator) -> dict | None:
    """A reading for a non-finite loss at the current parameters (a diverged run), else ``None``."""
    loss = op.loss
    if math.isfinite(loss):
        return None
    return {"value": math.nan, "n_hvp": 0, "converged": False,
            "note": f"the loss on the sample is {loss}: no curvature to read"}


def _share(ctx: Any, mode: str, pair: TopPair) -> None:
    """Leave this update's ``λ_max`` on the context, for :class:`Stability` of plain gradient descent."""
    try:
        ctx._sharpness = (mode, pair)
    except AttributeError:  # a context that takes no attributes: nothing is shared
        pass


def _shared(ctx: Any, mode: str) -> TopPair | None:
    shared = getattr(ctx, "_sharpness", None)
    return shared[1] if shared is not None and shared[0] == mode else None


class _Tracking:
    """What :class:`Sharpness` and :class:`Stability` share: the period, a :class:`_Tracker` (the
    warm-start vector, kept in ``state_dict``), and their own analysis-mode guard."""

    guarded = True  # reads inside its own analysis_mode (the Monitor adds none)

    def __init__(self, every: int | None = 100, tol: float = 1e-4, max_hvp: int = 200, basis_size: int = 60,
                 refresh: int | None = 10):
        self.every = _check_every(every)
        self._tracker = _Tracker(tol, max_hvp, basis_size, refresh)

    def reset(self) -> None:
        """Forget the warm-start vector and the operator's checks: they belong to the model read so far."""
        t = self._tracker
        self._tracker = _Tracker(t.tol, t.max_hvp, t.basis_size, t.refresh)

    def state_dict(self) -> dict:
        return self._tracker.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._tracker.load_state_dict(state)


class Sharpness(_Tracking):
    """``sharpness``: ``λ_max`` of the Hessian of the loss on the sample, ``H = ∇²L(θ)``.

    Cohen et al. 2021 ("Gradient descent on neural networks typically occurs at the edge of
    stability", ICLR) show ``λ_max`` rising during full-batch gradient descent until it
    reaches ``2/η`` and hovering there; Gilmer et al. 2021 ("A loss curvature perspective on
    training instability") tie warm-up to lowering early sharpness.

    Tracked by Lanczos warm-started from the previous reading's top eigenvector (module
    docstring): a reading stops when its estimated error ``min(r, r²/gap)`` is ``≤ tol·|λ|``
    (``r = ‖H x − λ x‖``).

    Parameters: ``every`` (100 updates between readings; ``None``: the Monitor's), ``tol`` (1e-4), ``max_hvp``
    (200 products per reading), ``basis_size`` (60 Lanczos vectors; fewer to fit 256 MiB),
    ``refresh`` (10: every 10th reading starts cold, from a random vector; ``None``: never).

    Reading: ``{"value": λ_max, "n_hvp": products, "converged": bool, "residual": ‖Hx − λx‖,
    "estimated_error": of λ_max, "warm": started from the previous vector}``. Measured
    (``benchmarks/sharpness_tracking.py``, tanh MLP on 500 digits, full-batch GD, a reading
    every 10 updates): 4.9 products per reading after the first, at most 1.9e-4 relative
    error against a cold start.
    State (``state_dict``): the last top eigenvector and the readings made, so a resumed run
    keeps tracking.
    """

    name = "sharpness"
    on_spike = True  # the Monitor reads it at once when the loss jumps (trainlab.instruments.spike)

    def read(self, ctx: Any) -> dict:
        mode = getattr(ctx, "mode", "eval")
        with analysis_mode(ctx.model, mode):
            op = self._tracker.operators.build(ctx)
            bad = _non_finite(op)
            if bad is not None:
                return bad
            pair, warm = self._tracker.track(op.matvec, op.n, int(getattr(ctx, "seed", 0)), op.device, op.dtype)
            self._tracker.operators.done(op)
        _share(ctx, mode, pair)
        return {"value": pair.value, "n_hvp": op.n_hvp, "converged": pair.converged, "residual": pair.residual,
                "estimated_error": pair.error, "warm": warm}


# ------------------------------------------------------------------------------------------ stability
#: Optimizers read as gradient descent with (optional) heavy-ball or Nesterov momentum.
_SGD = (torch.optim.SGD,)
_ADAM = (torch.optim.Adam, torch.optim.AdamW)
_RMSPROP = (torch.optim.RMSprop,)
_ADAGRAD = (torch.optim.Adagrad,)


def _kind(optimizer: torch.optim.Optimizer) -> str | None:
    from trainlab import optim as tlo  # (optim sits below instruments; imported here to keep this module light)

    if isinstance(optimizer, (*_SGD, tlo.SGD)):
        return "sgd"
    if isinstance(optimizer, (*_ADAM, tlo.Adam)):
        return "adam"
    if isinstance(optimizer, (*_RMSPROP, tlo.RMSProp)):
        return "rmsprop"
    if isinstance(optimizer, (*_ADAGRAD, tlo.Adagrad)):
        return "adagrad"
    return None


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 — float32 on Apple's MPS, which has no float64."""
    return t.float() if t.device.type == "mps" else t.double()


def _step_count(state: dict) -> float:
    return float(state["step"]) if "step" in state else 0.0


def _preconditioner(kind: str, group: dict, state: dict) -> torch.Tensor | None:
    """``P`` of one parameter from its optimizer state (``None`` when it has none yet)."""
    eps = float(group.get("eps", 0.0))
    if kind == "adam":
        key = "max_exp_avg_sq" if group.get("amsgrad") and "max_exp_avg_sq" in state else "exp_avg_sq"
        if key not in state or _step_count(state) < 1:
            return None
        t = _step_count(state)
        beta1, beta2 = group["betas"]
        # Cohen et al. 2022 fold the first moment's bias correction into P: the step is
        # η/(1 − β₁^t) · m / (sqrt(v̂) + eps) = η · P⁻¹ m with P = (1 − β₁^t)(sqrt(v̂) + eps)
        v_hat = wide(state[key].detach()) / (1 - beta2 ** t)
        return (1 - beta1 ** t) * (v_hat.sqrt() + eps)
    if kind == "rmsprop":
        if "square_avg" not in state:
            return None
        v = wide(state["square_avg"].detach())
        if group.get("centered") and "grad_avg" in state:
            v = v - wide(state["grad_avg"].detach()) ** 2
        return v.clamp_min(0).sqrt() + eps
    if kind == "adagrad":
        if "sum" not in state or ("step" in state and _step_count(state) < 1):
            return None
        return wide(state["sum"].detach()).sqrt() + eps
    return None


def _threshold(kind: str | None, group: dict) -> float:
    """The largest stable ``η·λ`` of the update on a quadratic (docstring of :class:`Stability`)."""
    if kind == "sgd":
        beta = float(group.get("momentum", 0.0))
        if beta and group.get("nesterov"):
            return (2 + 2 * beta) / (1 + 2 * beta)
        return 2 * (1 + beta)
    if kind == "adam":
        beta1 = float(group["betas"][0])
        return float(f"{(2 + 2 * beta1) / (1 - beta1):.12g}")  # 38, not 38.00000000000001
    if kind == "rmsprop":
        return 2 * (1 + float(group.get("momentum", 0.0)))
    return 2.0


def _rate(kind: str | None, group: dict, state: dict | None) -> float:
    """The learning rate the update applies to ``P⁻¹ ·`` (torch's dampening and Adagrad's decay)."""
    lr = float(group["lr"])
    if kind == "sgd":
        return lr * (1 - float(group.get("dampening", 0.0)))
    if kind == "adagrad" and state and group.get("lr_decay"):
        return lr / (1 + (max(_step_count(state), 1) - 1) * float(group["lr_decay"]))
    return lr


def scaling(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> tuple[torch.Tensor | None, dict]:
    """``D = diag(ηᵢ / Pᵢ)`` over the flat ``params``, read from ``optimizer``'s state, with facts
    about it: ``kind``, ``threshold``, ``preconditioned``, ``lr``, and a ``note`` when ``P`` is
    missing. ``D`` is ``None`` when the update is plain gradient descent (``D = η I``).

    ``Pᵢ``: Adam ``(1 − β₁^t)(sqrt(v/(1 − β₂^t)) + eps)`` (``exp_avg_sq``, ``step``; ``max_exp_avg_sq``
    with amsgrad), RMSProp ``sqrt(square_avg) + eps`` (minus ``grad_avg²`` when centered),
    Adagrad ``sqrt(sum) + eps``; parameters the optimizer does not hold, or holds no state for
    yet, do not move: ``Dᵢ = 0``. Cost: one pass over the state, no products.
    """
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    first = optimizer.param_groups[0]
    kind = _kind(optimizer)
    info: dict[str, Any] = {"kind": kind or type(optimizer).__name__, "threshold": _threshold(kind, first),
                            "lr": float(first["lr"]), "preconditioned": False}
    if kind is None:
        info["note"] = (f"{type(optimizer).__name__} is not read as SGD, Adam, RMSProp or Adagrad: plain η·λ_max"
                        " with threshold 2")
    if kind in (None, "sgd"):
        rates = {_rate(kind, groups[id(p)], None) for p in params if id(p) in groups}
        if len(rates) <= 1 and all(id(p) in groups for p in params):
            info["lr"] = rates.pop() if rates else info["lr"]
            return None, info
        parts = [wide(torch.full((p.numel(),), _rate(kind, groups[id(p)], None) if id(p) in groups else 0.0,
                                 device=p.device)) for p in params]
        return torch.cat(parts), info
    parts, found = [], 0
    for p in params:
        group, state = groups.get(id(p)), optimizer.state.get(p, {})
        P = _preconditioner(kind, group, state) if group is not None else None
        if P is None:
            parts.append(wide(torch.zeros(p.numel(), device=p.device)))
            continue
        found += 1
        parts.append((_rate(kind, group, state) / P).reshape(-1).to(p.device))
    if not found:
        info["note"] = f"{info['kind']} holds no state yet (before its first update): plain η·λ_max"
        info["threshold"] = 2.0
        return None, info
    info["preconditioned"] = True
    if found < len(params):
        info["note"] = f"{len(params) - found} of {len(params)} parameter tensors have no optimizer state: held fixed"
    return torch.cat(parts), info


class Stability(_Tracking):
    """``stability``: ``η·λ_max`` of the update's linearisation — the quantity whose crossing of
    ``threshold`` makes gradient descent diverge along the sharpest direction.

    On a quadratic with Hessian ``H``, gradient descent ``θ ← θ − η g`` multiplies the error
    along an eigenvector by ``1 − ηλ``: stable iff ``η λ_max < 2``. Heavy-ball momentum ``β``
    (``trainlab.optim.SGD(momentum=β)``, ``torch.optim.SGD``) is stable iff ``η λ_max < 2(1 + β)``,
    Nesterov momentum iff ``η λ_max < (2 + 2β)/(1 + 2β)`` (Cohen et al. 2021, "Gradient descent
    on neural networks typically occurs at the edge of stability", ICLR, appendix); torch's
    ``dampening d`` scales ``η`` by ``1 − d``.

    Adaptive optimizers step ``θ ← θ − η P⁻¹ m`` with a diagonal ``P``: their stability is set
    by the preconditioned sharpness ``λ_max(P⁻¹H) = λ_max(P^{-1/2} H P^{-1/2})``, computed
    here from products ``v ↦ P^{-1/2} H P^{-1/2} v`` (warm-started Lanczos, as
    :class:`Sharpness`), with ``P`` read from the optimizer's current state, not recomputed:

    - Adam / AdamW (``trainlab.optim.Adam``, ``torch.optim.Adam/AdamW``): ``P = (1 − β₁^t)
      (sqrt(v/(1 − β₂^t)) + eps)``, ``v = exp_avg_sq`` (``max_exp_avg_sq`` with amsgrad),
      ``t = step``. Cohen et al. 2022 ("Adaptive gradient methods at the edge of stability")
      define ``P`` with the factor ``1 − β₁^t`` (the momentum's bias correction) and show the
      preconditioned sharpness rising to ``(2 + 2β₁)/((1 − β₁) η)`` — ``38/η`` for
      ``β₁ = 0.9`` — so the ``threshold`` on ``η λ_max(P⁻¹H)`` is ``(2 + 2β₁)/(1 − β₁)``
      (the stability limit of an exponential moving average of gradients with frozen ``P``).
    - RMSProp (``trainlab.optim.RMSProp``, ``torch.optim.RMSprop``): ``P = sqrt(square_avg) + eps``
      (``square_avg − grad_avg²`` when ``centered``); threshold 2, or ``2(1 + μ)`` with torch's momentum ``μ``.
    - Adagrad: ``P = sqrt(sum) + eps`` (learning rate ``η/(1 + (t − 1)·lr_decay)`` for torch's
      ``lr_decay``); threshold 2.

    Before the optimizer holds any state (step 0) the reading falls back to ``η·λ_max(H)``
    with ``"preconditioned": False`` and a note. Parameter groups with other learning rates
    are handled by putting each ``ηᵢ`` into the diagonal (``value = λ_max(D^{1/2} H D^{1/2})``,
    ``D = diag(ηᵢ/Pᵢ)``); ``lambda_max`` is ``value/η`` with ``η`` the first group's rate.
    Weight decay (which adds ``wd`` to ``H`` for L2) is left out: this is the loss's Hessian.

    For plain gradient descent, when :class:`Sharpness` was read at the same update (the
    Monitor reads it first), its ``λ_max`` is used and the reading costs no products
    (``n_hvp`` 0).

    Parameters: ``every`` (100), ``tol`` (1e-4), ``max_hvp`` (200), ``basis_size`` (60), ``refresh`` (10).
    Reading: ``{"value": η·λ_max, "lambda_max", "threshold", "preconditioned", "n_hvp",
    "converged"}`` (+ ``"note"`` on a fallback). Needs ``ctx.optimizer`` or ``ctx.lr``.
    State: the last top eigenvector (of the scaled operator).
    """

    name = "stability"
    on_spike = True  # the Monitor reads it at once when the loss jumps (trainlab.instruments.spike)

    def read(self, ctx: Any) -> dict:
        optimizer = getattr(ctx, "optimizer", None)
        lr = getattr(ctx, "lr", None)
        if optimizer is None and lr is None:
            raise ConfigError("stability needs the learning rate: the context has optimizer=None and lr=None;"
                              " pass the optimizer (or a learning rate)")
        mode = getattr(ctx, "mode", "eval")
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no parameters that require gradients")
        if optimizer is not None:
            d, info = scaling(optimizer, params)
        else:
            d, info = None, {"threshold": 2.0, "lr": float(lr), "preconditioned": False,
                             "note": "no optimizer: plain η·λ_max with threshold 2"}
        scale = info["lr"] if d is None else 1.0
        pair = _shared(ctx, mode) if d is None else None  # the sharpness read at this update, if any
        n_hvp = 0
        if pair is None:
            with analysis_mode(ctx.model, mode):
                op = self._tracker.operators.build(ctx)
                bad = _non_finite(op)
                if bad is not None:
                    return {**bad, "lambda_max": math.nan, "threshold": info["threshold"], "preconditioned": False}
                if d is None:
                    matvec = op.matvec
                else:
                    root = d.to(device=op.device, dtype=op.dtype).sqrt()
                    matvec = (lambda v: root * op.matvec(root * v))
                pair, _ = self._tracker.track(matvec, op.n, int(getattr(ctx, "seed", 0)), op.device, op.dtype)
                self._tracker.operators.done(op)
                n_hvp = op.n_hvp
        value = pair.value * scale
        eta = float(lr) if lr is not None else info["lr"]
        out = {"value": value, "lambda_max": value / eta if eta > 0 else math.nan, "threshold": info["threshold"],
               "preconditioned": info["preconditioned"], "n_hvp": n_hvp, "converged": pair.converged}
        if "note" in info:
            out["note"] = info["note"]
        return out


class HessianTrace:
    """``trace``: ``tr H`` of the loss on the sample — the sum of all curvatures, a cheap
    summary of the whole spectrum beside ``λ_max`` — by Hutchinson's estimator
    ``tr H = E[zᵀ H z]`` over Rademacher ``z`` (Hutchinson 1989), by default in its Hutch++ form
    (Meyer, Musco, Musco & Woodruff 2021: a third of the products sketch the top of the spectrum,
    whose trace is then taken exactly; much less variance when a few eigenvalues dominate),
    through :func:`trainlab.curvature.trace`. The probes are drawn from ``ctx.seed`` — the same
    at every reading, so changes over training are not probe noise.

    Parameters: ``every`` (100), ``samples`` (products per reading, 30), ``method``
    (``"hutch++"`` or ``"hutchinson"``). Reading: ``{"value": tr H, "stderr", "n_hvp"}``.
    Cost: one gradient and ``samples`` products.
    """

    name = "trace"
    guarded = True  # reads inside its own analysis_mode (the Monitor adds none)

    def __init__(self, every: int | None = 100, samples: int = 30, method: str = "hutch++"):
        self.every = _check_every(every)
        if method not in ("hutch++", "hutchinson"):
            raise ConfigError(f"method={method!r} is not allowed; use 'hutch++' or 'hutchinson'")
        least = 3 if method == "hutch++" else 2
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < least:
            raise ConfigError(f"samples={samples!r} is not allowed; expected an integer >= {least} for {method}")
        self.samples, self.method = samples, method
        self._operators = _Operators()

    def reset(self) -> None:
        """Forget the first reading's checks and memory decision: they belong to the model read so far."""
        self._operators = _Operators()

    def read(self, ctx: Any) -> dict:
        with analysis_mode(ctx.model, getattr(ctx, "mode", "eval")):
            op = self._operators.build(ctx)
            bad = _non_finite(op)
            if bad is not None:
                return {"value": math.nan, "stderr": math.nan, "n_hvp": 0, "note": bad["note"]}
            result = trace_of(op, self.samples, self.method, int(getattr(ctx, "seed", 0)))
            self._operators.done(op)
        return {"value": result.value, "stderr": result.stderr, "n_hvp": result.n_hvp}


__all__ = ["HessianTrace", "Sharpness", "Stability", "TopPair", "scaling", "top_eigenpair"]
