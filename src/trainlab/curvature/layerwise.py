"""Where the curvature lives: one Hessian block per layer, and per pair of neighbouring layers.

A verdict for the whole network does not say *where* its negative curvature or its sharpness
sits. :func:`layerwise` answers per layer: for a group ``S`` of parameters (a layer's, by
default) it diagnoses the diagonal block ``H_SS = ∂²L/∂θ_S²`` of the Hessian, the other
parameters held fixed (:func:`~trainlab.curvature.diagnose` with ``params=S``): ``λ_max``,
``λ_min``, the trace, the share of negative eigenvalues and the block's verdict (from the
block's gradient ``∇_S L`` and its eigenvalues).

**Why couplings.** Within one layer the Hessian block is rarely indefinite. Write
``H = G + R``: ``G = Jᵀ ∇²ℓ J`` (the Gauss–Newton part, positive semi-definite for a loss
convex in the outputs) and ``R = Σ_i r_i · ∇²f_i`` (the network's second derivatives weighted
by the residuals ``r_i = ∂ℓ/∂f_i``). The outputs of a piecewise-linear network (ReLU, linear
layers) are linear in any one layer's weights, so ``∇²f`` vanishes inside the layer's block:
its block *equals* the Gauss–Newton block and has no negative eigenvalue. What ``R`` holds is
the products of weights of *different* layers, so a network's negative curvature lives between
layers. The lecture's saddle is of this kind: ``ŷ = w₂ w₁ x`` at ``w₁ = w₂ = 0`` has the
Hessian ``[[0, −r x], [−r x, 0]]`` (eigenvalues ``±|r x|``) in the pair, and ``0`` in each
weight alone. So with ``couplings=True`` (the default) :func:`layerwise` adds one row per pair of
consecutive groups, ``"a + b"``, the joint block of both: a saddle there and in no single layer
says that the two layers' interaction makes it (a zero layer between them, as in the lecture).

**Groups.** By default each module that directly holds parameters requiring gradients is one
group, named by its module name, in model order. More than :data:`MAX_GROUPS` of them are
merged by name prefix: the deepest dotted-prefix depth that leaves at most :data:`MAX_GROUPS`
groups (ResNet-18: ``conv1``, ``bn1``, ``layer1.0`` … ``layer4.1``, ``fc``), and if even the
first component leaves more, runs of consecutive groups (``"0–3"``). :func:`layer_groups`
returns the grouping without computing anything.

**Cost.** One :func:`~trainlab.curvature.diagnose` per row: ``g`` groups give ``g`` rows, and
``g − 1`` more with couplings. A block of at most ``dense_max_params`` (2,000) parameters is
exact: ``n`` Hessian-vector products (HVPs) and an ``O(n³)`` ``eigh``; a larger one takes the
Lanczos path with cheap defaults (``k=5`` at each end to ``tol=1e-4``, ``probes=5 × steps=40`` for
the counts and the trace): typically 300–500 HVPs a row (measured on a digits MLP: 420 for a
2,080-parameter ReLU layer, 347 for its coupling with the next; the same layer costs 3,032 at
``diagnose``'s ``tol=1e-6``, its smallest eigenvalues being a cluster at 0). Each HVP is as
costly as one on the whole model: it runs through the whole network. A row at a critical point
that finds negative curvature also finds ``λ_min`` of the Gauss–Newton block
(``ggn_lambda_min``; exact: ``n`` more HVPs, Lanczos: at most 300). ``max_hvp`` bounds each row.
"""

from __future__ import annotations

import inspect
import math
import textwrap
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from torch import nn

from trainlab import distributed as dist
from trainlab.curvature import progress as progress_bar
from trainlab.curvature.critical import diagnose
from trainlab.curvature.density import check_counts, check_plan
from trainlab.curvature.operator import MATH_ATTENTION_NOTE, LossFn
from trainlab.curvature.selection import ParamSpec, names as selected_names
from trainlab.data.batches import Batch
from trainlab.errors import ConfigError

#: Groups at most that the default grouping makes (with couplings the table has twice as many rows, less one).
MAX_GROUPS = 16
#: Width a row's name takes in the table; longer names are shortened in the middle.
NAME_WIDTH = 28
_PASSED = tuple(name for name in inspect.signature(diagnose).parameters if name not in ("model", "loss_fn", "data"))


@dataclass
class LayerRow:
    """The diagnosis of one group's Hessian block (the others held fixed).

    Fields:
        name: the group's name, or ``"a + b"`` for the coupling row of groups ``a`` and ``b``.
        coupling: whether the row is the joint block of two neighbouring groups.
        params: the parameter names in the block; n_params: their number of entries.
        verdict: the block's verdict (:data:`~trainlab.curvature.critical.VERDICTS`), from
            ``grad_norm`` (``‖∇_S L‖``, the block's gradient) and its eigenvalues; ``certain``
            whether it rests on converged eigenvalues only.
        lambda_max, lambda_min: the block's extreme eigenvalues; ``flat_threshold`` the ``|λ|``
            at or below which one counts as flat.
        trace, trace_stderr: ``tr H_SS``, exact (stderr 0) or estimated from the density's probes.
        negative_share: ``n_negative / n_params``, the share of negative eigenvalues (estimated on
            the Lanczos path); ``negative_share_bounds`` the density's bounds on it there (the
            table prints those: the point estimate splits the cluster at zero arbitrarily).
        ggn_lambda_min: ``λ_min`` of the Gauss–Newton block when negative curvature was found
            (``None`` otherwise): ``≥ 0`` says the negative curvature comes from ``R = H − G``.
        method: ``"dense"`` (exact) or ``"lanczos"``; n_hvp, seconds: the row's cost; notes: its
            diagnosis's notes.
    """

    name: str
    coupling: bool
    params: list[str]
    n_params: int
    verdict: str
    certain: bool
    grad_norm: float
    lambda_max: float
    lambda_min: float
    flat_threshold: float
    trace: float
    trace_stderr: float
    negative_share: float
    ggn_lambda_min: float | None
    method: str
    n_hvp: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    negative_share_bounds: tuple[float, float] = (math.nan, math.nan)

    @property
    def exact(self) -> bool:
        return self.method == "dense"


@dataclass(repr=False)
class Layerwise:
    """What :func:`layerwise` found: ``rows`` (:class:`LayerRow`, each group followed by its
    coupling with the next), ``loss`` at the current parameters, ``n_hvp`` and ``seconds`` over
    all rows, ``notes``, ``operator`` (whose blocks). ``str()`` is a table for one screen."""

    rows: list[LayerRow]
    loss: float
    n_hvp: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    operator: str = "hessian"

    @property
    def saddles(self) -> list[str]:
        """The names of the rows whose block is a saddle."""
        return [r.name for r in self.rows if r.verdict == "saddle"]

    def row(self, name: str) -> LayerRow:
        """The row called ``name``; :class:`KeyError` naming the rows when there is none."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-able values (``NaN`` as ``None``)."""
        return _plain({"rows": [asdict(r) for r in self.rows], "loss": self.loss, "n_hvp": self.n_hvp,
                       "seconds": self.seconds, "notes": list(self.notes), "operator": self.operator})

    def __str__(self) -> str:
        groups = sum(not r.coupling for r in self.rows)
        what = {"hessian": "Hessian", "ggn": "Gauss–Newton", "fisher": "empirical Fisher"}.get(self.operator,
                                                                                              self.operator)
        head = (f"{what} blocks by layer: {groups} group{'s' * (groups != 1)}"
                f"{f', {len(self.rows) - groups} coupling(s)' if groups != len(self.rows) else ''};"
                f" loss {self.loss:.6g}; {self.n_hvp:,} products, {self.seconds:.2f} s")
        lines = [head, f"  {'block':<{NAME_WIDTH}} {'params':>9} {'λ_max':>10} {'λ_min':>10} {'trace':>11}"
                       f" {'neg':>11}  verdict"]
        for r in self.rows:
            approx = "" if r.exact else "≈"
            name = ("  " if r.coupling else "") + _short(r.name, NAME_WIDTH - (2 if r.coupling else 0))
            verdict = r.verdict.replace("_", " ") + ("" if r.certain else " ?")
            lines.append(f"  {name:<{NAME_WIDTH}} {r.n_params:>9,} {_number(r.lambda_max, r):>10}"
                         f" {_number(r.lambda_min, r):>10} {approx + f'{r.trace:.4g}':>11}"
                         f" {_bounds(r):>11}  {verdict}" + ("" if r.exact else " (Lanczos)"))
        saddles = self.saddles
        lines.append(f"  saddle in: {', '.join(saddles)}" if saddles else "  no block is a saddle")
        from_r = [r.name for r in self.rows if r.ggn_lambda_min is not None and r.ggn_lambda_min >= -r.flat_threshold]
        if from_r:
            lines += textwrap.wrap(f"negative curvature from R = H − G, the network's second derivatives (the block's"
                                   f" Gauss–Newton part G has none), in: {', '.join(from_r)}", width=98,
                                   initial_indent="  ", subsequent_indent="  ")
        lines += [
            "  λ: extreme eigenvalues of the block of the row's parameters, the others held fixed; indented a + b:",
            "  the joint block of neighbouring groups a and b (their coupling); neg: share of negative eigenvalues",
            "  (a–b: the density's bounds); 0: |λ| within the flat threshold; ≈: estimated (Lanczos); ?: verdict"
            " uncertain",
        ]
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])

    __repr__ = __str__


def layer_groups(model: nn.Module, groups: Mapping[str, ParamSpec] | Iterable[ParamSpec] | None = None
                 ) -> dict[str, list[str]]:
    """``{group name: parameter names}`` as :func:`layerwise` forms them (module docstring), in
    model order for the default grouping and in the given order otherwise.

    ``groups``: ``None`` (default grouping); a dict ``{name: spec}``; or a list of specs, each
    named after itself (a module's or parameter's name, a string as given). A spec is anything
    ``params=`` takes (:mod:`trainlab.curvature.selection`). Raises
    :class:`~trainlab.errors.ConfigError` for an empty ``groups``, a spec that selects nothing
    (unknown name, frozen parameters), or two groups of one name. Cost: none.
    """
    if groups is None:
        return _default_groups(model)
    if isinstance(groups, (str, nn.Module)) or not isinstance(groups, (Mapping, Iterable)) or callable(groups):
        raise ConfigError(f"groups={groups!r} is not allowed; expected None (one group per layer), a dict"
                          " {name: parameters} or a list of modules, names or parameters of the model")
    items = list(groups.items()) if isinstance(groups, Mapping) else [(None, spec) for spec in groups]
    if not items:
        raise ConfigError("groups is empty; give at least one group, or None for one group per layer")
    found: dict[str, list[str]] = {}
    for name, spec in items:
        if name is not None and not (isinstance(name, str) and name):
            raise ConfigError(f"groups has the key {name!r}; group names are non-empty strings")
        name = name if name is not None else _name_of(model, spec)
        try:
            chosen = selected_names(model, spec)
        except ConfigError as e:
            raise ConfigError(f"group {name!r}: {e}") from None
        if name in found:
            raise ConfigError(f"two groups are called {name!r}; give groups as a dict to name them apart")
        found[name] = chosen
    return found


def layerwise(model: nn.Module, loss_fn: LossFn | None, data: Batch | Iterable[Any],
              groups: Mapping[str, ParamSpec] | Iterable[ParamSpec] | None = None, couplings: bool = True,
              k: int = 5, method: str = "auto", grad_tol: float = 1e-3, probes: int = 5, steps: int = 40,
              tol: float = 1e-4, *, progress: bool = True, **options: Any) -> Layerwise:
    """One diagnosis per group of parameters (a layer, by default) and per pair of neighbours.

    Parameters:
        model, loss_fn, data: as for :func:`~trainlab.curvature.diagnose`.
        groups: ``None`` — each module directly holding parameters that require gradients, merged
            by name prefix past :data:`MAX_GROUPS` (module docstring); a dict ``{name: spec}``; or a
            list of specs (modules, names, parameters, or lists of them), named after themselves.
            Specs as ``params=`` (:mod:`trainlab.curvature.selection`).
        couplings: add the joint block of each pair of consecutive groups as row ``"a + b"``
            (True): where the negative curvature of a network lives (module docstring).
        k: eigenpairs at each end on the Lanczos path (5); method: ``"auto"`` (exact up to
            ``dense_max_params`` = 2,000 parameters), ``"dense"`` or ``"lanczos"``, per row;
            grad_tol: a block is critical when ``‖∇_S L‖ ≤ grad_tol`` (1e-3).
        probes, steps: the density's probes and Lanczos steps per probe on the Lanczos path (5, 40).
        tol: Lanczos convergence tolerance relative to ``max|λ|`` (1e-4; ``diagnose`` takes 1e-6): the
            smallest eigenvalues of a layer sit in a cluster near 0, where 1e-6 costs several times
            more (module docstring); negative curvature smaller than ``tol · max|λ|`` may go unseen.
        progress: a progress bar over the rows when the call runs longer than 2 s (True).
        options: passed to every row's :func:`~trainlab.curvature.diagnose` — ``eig_tol``,
            ``eig_floor``, ``dense_max_params``, ``seed``, ``mode``, ``distributed``,
            ``group``, ``max_hvp`` (each row's budget), ``max_seconds`` (each exact row's),
            ``batch_loss``, ``max_samples``, ``max_graph_bytes``, ``operator``.

    Returns:
        :class:`Layerwise` — ``rows`` (:class:`LayerRow`: name, parameters, λ_max, λ_min, trace,
        negative share, verdict, …; each group followed by its coupling with the next), ``saddles``,
        ``row(name)``, ``to_dict()``, and a table as ``str()``.

    Cost: the sum of the rows' diagnoses (module docstring); the model is not changed.
    Raises :class:`~trainlab.errors.ConfigError` for bad groups or options, before any product.
    """
    unknown = sorted(set(options) - set(_PASSED))
    if "params" in options:
        raise ConfigError("layerwise takes groups=, not params= (each group is one params= selection)")
    if unknown:
        raise TypeError(f"layerwise() got unexpected keyword argument(s): {', '.join(unknown)}")
    if not isinstance(couplings, bool):
        raise ConfigError(f"couplings={couplings!r} is not allowed; expected True or False")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k={k!r} is not allowed; expected an integer >= 1")
    check_counts(probes=probes, steps=steps)  # up front, not at the first row's density
    check_plan(probes, steps, options.get("max_hvp"))
    found = layer_groups(model, groups)
    plan: list[tuple[str, list[str], bool]] = []
    names = list(found)
    for i, name in enumerate(names):
        plan.append((name, found[name], False))
        if couplings and i + 1 < len(names):
            joint = found[name] + [p for p in found[names[i + 1]] if p not in found[name]]
            plan.append((f"{name} + {names[i + 1]}", joint, True))
    notes = []
    shared = sorted({p for i, a in enumerate(names) for b in names[i + 1:] for p in set(found[a]) & set(found[b])})
    if shared:
        notes.append(f"groups overlap in {len(shared):,} parameter(s) ({', '.join(shared[:3])}"
                     f"{', …' if len(shared) > 3 else ''}): those rows share them")
    start = time.perf_counter()
    rows, loss = [], math.nan
    bar = _bar(len(plan), progress and dist.rank(options.get("group")) == 0)  # rank 0 alone shows it
    try:
        for name, params, coupling in plan:
            bar.set_postfix_str(_short(name, 30), refresh=False)  # refreshing would show it before its delay
            d = diagnose(model, loss_fn, data, grad_tol=grad_tol, method=method, k=k, tol=tol, probes=probes,
                         steps=steps, progress=False, params=params, **options)
            loss = d.loss
            lam = d.eigenvalues
            rows.append(LayerRow(
                name=name, coupling=coupling, params=params, n_params=d.n_params, verdict=d.verdict,
                certain=d.certain, grad_norm=d.grad_norm, lambda_max=float(lam[0]), lambda_min=float(lam[-1]),
                flat_threshold=d.flat_threshold, trace=d.trace, trace_stderr=d.trace_stderr,
                negative_share=d.n_negative / d.n_params, ggn_lambda_min=d.ggn_lambda_min, method=d.method,
                n_hvp=d.n_hvp, seconds=d.seconds, notes=list(d.notes), negative_share_bounds=d.negative_share_bounds))
            bar.update(1)
    finally:
        bar.close()
    notes += [MATH_ATTENTION_NOTE] if any(MATH_ATTENTION_NOTE in r.notes for r in rows) else []  # said once
    uncertain = [r.name for r in rows if not r.certain]
    if uncertain:
        notes.append(f"the verdict of {', '.join(uncertain)} rests on an unconverged eigenvalue (see the row's notes);"
                     " raise max_hvp or k")
    return Layerwise(rows, loss, sum(r.n_hvp for r in rows), time.perf_counter() - start, notes,
                     options.get("operator", "hessian"))


# ------------------------------------------------------------------------------------------ groups
def _default_groups(model: nn.Module) -> dict[str, list[str]]:
    """Each module directly holding parameters that require gradients, then merged (module docstring)."""
    owners: dict[str, list[str]] = {}
    for module_name, module in model.named_modules():
        mine = [name for name, p in module.named_parameters(recurse=False) if p.requires_grad]
        if mine:
            prefix = f"{module_name}." if module_name else ""
            owners[module_name] = [prefix + name for name in mine]
    if not owners:
        raise ConfigError("the model has no parameters that require gradients")
    if len(owners) <= MAX_GROUPS:
        return {_label(model, name): params for name, params in owners.items()}
    deepest = max(len(name.split(".")) for name in owners)
    for depth in range(deepest - 1, 0, -1):
        merged: dict[str, list[str]] = {}
        for name, params in owners.items():
            key = ".".join(name.split(".")[:depth]) if name else ""
            merged.setdefault(key, []).extend(params)
        if len(merged) <= MAX_GROUPS:
            return {_label(model, name): params for name, params in merged.items()}
    # even the first name component leaves too many: runs of consecutive groups
    merged = {}
    for name, params in owners.items():
        merged.setdefault(name.split(".")[0] if name else "", []).extend(params)
    keys = list(merged)
    size = math.ceil(len(keys) / MAX_GROUPS)
    runs = [keys[i:i + size] for i in range(0, len(keys), size)]
    return {(_label(model, run[0]) if len(run) == 1 else f"{_label(model, run[0])}–{_label(model, run[-1])}"):
            [p for key in run for p in merged[key]] for run in runs}


def _label(model: nn.Module, module_name: str) -> str:
    """A group's name: the module's, or ``(Type)`` for the parameters the model holds itself."""
    return module_name or f"({type(model).__name__})"


def _name_of(model: nn.Module, spec: Any) -> str:
    """The name a group given as a list item goes by: its own name, a module's or parameter's
    name in the model, or the names it stands for."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, nn.Module):
        found = next((name for name, m in model.named_modules() if m is spec), None)
        return _label(model, found) if found is not None else type(spec).__name__
    if isinstance(spec, nn.Parameter) or hasattr(spec, "shape"):
        return next((name for name, p in model.named_parameters() if p is spec), "a tensor")
    if callable(spec):
        return getattr(spec, "__name__", "a filter")
    if isinstance(spec, Iterable):
        return ", ".join(_name_of(model, item) for item in spec)
    return repr(spec)


# ------------------------------------------------------------------------------------------ printing
def _short(name: str, width: int) -> str:
    """``name`` cut in the middle to ``width`` characters (a coupling: each side alike)."""
    if len(name) <= width:
        return name
    if " + " in name:
        a, b = name.split(" + ", 1)
        half = (width - 3) // 2
        return f"{_short(a, half)} + {_short(b, width - 3 - half)}"
    keep = width - 1
    return name[:(keep + 1) // 2] + "…" + name[len(name) - keep // 2:]


def _number(value: float, row: LayerRow) -> str:
    """An eigenvalue to 4 significant digits, ``0`` within the flat threshold."""
    if abs(value) <= row.flat_threshold:
        return "0"
    return f"{value:.4g}"


def _share(share: float) -> str:
    return "0" if share == 0 else f"{share:.3g}"


def _bounds(row: LayerRow) -> str:
    """The negative share: exact, or the density's bounds on the Lanczos path."""
    low, high = row.negative_share_bounds
    if row.exact or not (math.isfinite(low) and math.isfinite(high)) or low == high:
        return ("" if row.exact else "≈") + _share(row.negative_share)
    return f"{_share(low)}–{_share(high)}"


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and NaN as ``None``, for JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _bar(total: int, enabled: bool) -> Any:
    """A bar over the rows, appearing after :data:`~trainlab.curvature.progress.DELAY` seconds."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="layerwise", unit="row", delay=progress_bar.DELAY, leave=False,
                dynamic_ncols=True, disable=not enabled)
