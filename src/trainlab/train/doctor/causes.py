"""The stall doctor's causes: one small rule per cause, ``rule(evidence) -> Finding | None``,
listed once in priority order (:data:`RULES`). Every rule that holds is a finding; the first is
treated, the others are advice. A new cause is one rule here and one case in the zoo.

The order settles what several causes share. A loss at the entropy of the labels' marginal says
the network carries no input information; *which* cause put it there is decided by who comes
first: features of wildly different scales (the elongated bowl makes every η wrong, too large
along one axis and a crawl along another), a warm-up missing (its wrecked net also shows dead
units, vanishing gradients and steps too large, symptoms of the early steps), a step too large,
an exploding gradient, a spike that is only a tiny batch's noise, a damaging spike, dead units, vanishing gradients
(unless a layer's weights are all zero: a zero initialisation's saddle), a loss that saturates,
a saddle, a crawl — and only when none of them holds, labels without signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from trainlab.train.doctor import treatments
from trainlab.train.doctor.evidence import CRAWL_RATIO, UPDATE_RATIO, Evidence, adaptive, median

#: The vocabulary of causes, each with the evidence that names it.
CAUSES = {
    "spike_damage": "the loss jumped far above its recent range and the sample loss stayed worse than before the"
                    " jump (Chowdhery et al. 2022)",
    "step_too_large": "η·λ_max (preconditioned for adaptive optimizers) above the edge of stability, 2 for plain"
                      " gradient descent (Cohen et al. 2021, 2022), or an adaptive optimizer's steps rewriting > 1 % of"
                      " every weight each update",
    "exploding_gradient": "the gradient norm ≥ 100× its recent median at a spike or ≥ 100× its early value, a"
                          " non-finite gradient, or the first layer's gradient ≫ the last's (Pascanu et al. 2013)",
    "degenerate": "gradient and Hessian both vanish: second order shows no way out",
    "dead_units": "at least `dead_share` of the units dead (ReLU output 0 on every sample) or saturated (Lu et al."
                  " 2019; Glorot & Bengio 2010)",
    "vanishing_gradient": "the first layer's gradient < 10⁻³ of the last's, units alive and no layer's weights all"
                          " zero (Hochreiter 1991; Glorot & Bengio 2010)",
    "needs_warmup": "an adaptive optimizer's first updates rewrote > 1 % of each weight per step and the loss sits"
                    " at the labels' marginal entropy (Liu et al. 2020; Xiong et al. 2020)",
    "saddle": "negative curvature λ_min < 0 worth a step along it: at a critical point, at all-zero weights, or"
              " |λ_min| ≥ λ_max outside a crawl (Dauphin et al. 2014)",
    "step_too_small": "η·λ_max ≪ 1: the step is far below what the sharpest direction allows (a crawl)",
    "ill_conditioned_features": "input columns whose scales differ by more than 100×: an elongated bowl (LeCun et"
                                " al. 1998, 'Efficient BackProp')",
    "no_signal": "the loss sits at the entropy of the labels' marginal with units and gradients healthy: the labels"
                 " carry nothing the inputs predict",
    "batch_noise": "batch ≪ B_simple: gradient noise dominates each step, and a spike of a run whose batch is below"
                   " half that threshold is its noise (McCandlish et al. 2018)",
    "plateau": "the loss saturates — cross-entropy's output gradient ≥ 3× the loss's (MSE on softmax) — or: not"
               " critical, no negative curvature, the step neither too large nor too small",
    "local_minimum": "no negative curvature and ‖∇L‖ ≤ grad_tol: nothing local lowers the loss",
    "local_maximum": "only negative curvature at a critical point",
}
#: The lecture's remedies for dead or saturated units.
UNITS_REMEDY = ("a better initialisation (He/Kaiming for ReLU, Glorot/Xavier for tanh and sigmoid), normalisation"
                " (BatchNorm, standardised inputs), or a lower learning rate")
#: ``‖∇L‖`` of the first weight-holding layer over the last's below this: vanishing; above its inverse: exploding.
LAYER_RATIO = 1e-3
#: A gradient norm this many times its recent median (a spike) or its early value (a growth) is exploding.
EXPLODE = 100.0
#: Input columns whose root-mean-squares differ by more than this are ill-conditioned features.
FEATURE_SPREAD = 100.0
#: A crawl's η is raised toward η·λ_max = this: a look's λ_max is a Ritz value from a few products (an
#: underestimate), and a raised η sharpens the landscape (raised to η·λ_max = 1 the digits MLP spiked
#: 230 updates later).
CRAWL_TARGET = 0.5
#: Cross-entropy's output gradient this many times the loss's: the loss saturates (a plateau).
#: MSE on softmax probabilities with C balanced classes reads C/2 at uniform outputs (5 on the digits,
#: 20 after 270 updates), cross-entropy 1, a focal loss (γ = 2) about 1.2.
SATURATION = 3.0
#: Negative curvature worth a step outside a critical point: |λ_min| at least this share of λ_max (a
#: shuffled-labels MLP stuck at the marginal entropy reads 0.33 and is no saddle; a zero init reads 1).
SADDLE_SHARE = 1.0
#: At a spike, ``B / B_simple`` below this share of ``batch_ratio``: the spike is gradient noise.
NOISY_SPIKE = 0.5


@dataclass
class Finding:
    """One thing the doctor found: the ``reading`` behind it, its ``value``, the ``remedy`` in
    words, and ``apply`` (``None``: advice only) that carries the remedy out; its ``cause`` (one
    of :data:`CAUSES`), the ``evidence`` that decided it and the ``layers`` involved, if any."""

    reading: str
    value: float | None
    remedy: str
    apply: Callable[[], dict[str, Any]] | None = None
    cause: str = "plateau"
    evidence: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, float] | None = None


def _on(optimizer: Any, apply: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]] | None:
    """A learning-rate remedy can be applied only with the optimizer at hand."""
    return None if optimizer is None else apply


def _marginal_note(ev: Evidence) -> str:
    return (f"; the loss {ev.loss:.3g} sits at the labels' marginal entropy {ev.marginal:.3g}: the network carries"
            " no input information") if ev.at_marginal else ""


# ---------------------------------------------------------------- the rules, in priority order
def spike_damage(ev: Evidence) -> Finding | None:
    """A spike whose damage lasted: roll back to the last good state and lower η ÷ 2."""
    if ev.spike is None or ev.good is None:
        return None
    s, good = ev.spike, ev.good
    evidence = {"spike_update": s["step"], "spike_loss": s["loss"], "recent_high": s["high"],
                "good_update": good.step, "good_loss": good.loss, "loss_now": s["loss_now"], "at_marginal": ev.at_marginal}
    factor = 0.5
    return Finding("loss", s["loss"], f"a loss spike at update {s['step']} ({s['loss']:.3g}, recent high"
                   f" {s['high']:.3g}) damaged the net: the sample loss went {good.loss:.4g} → {s['loss_now']:.4g}"
                   f"{_marginal_note(ev)}; roll back to update {good.step} and lower η ×{factor:g}",
                   _on(ev.optimizer, lambda: treatments.roll_back(ev.model, ev.optimizer, ev.scheduler, good, factor)),
                   "spike_damage", evidence)


def step_too_large(ev: Evidence) -> Finding | None:
    """``η·λ_max`` above the threshold — for an adaptive optimizer its steps rewriting more than
    :data:`UPDATE_RATIO` of every weight (:attr:`Evidence.by_update_ratio`; Adam η = 0.05 on the
    digits MLP: its loss spikes, its ratio is 0.018, its preconditioned ``η·λ_max`` 6, far below
    the threshold 38): ``η ← η · max(1/stability, 0.1)`` (``UPDATE_RATIO / ratio`` within [0.1,
    0.5] for the update ratio) — at a spike (judged by the update ratio only: the curvature read
    after a spike is the damaged net's) first rolled back to the last good state."""
    if not ev.too_large or (ev.spike is not None and not ev.by_update_ratio):
        return None  # after a spike, λ_max is the damaged net's, not that of the step that did the damage
    s, t, r = ev.stability, ev.threshold, ev.update_ratio
    if ev.by_update_ratio:
        factor = min(0.5, max(0.1, UPDATE_RATIO / r))
        why = f"each step rewrites {100 * r:.2g} % of every weight (median update ratio > {100 * UPDATE_RATIO:g} %)"
    else:
        factor = max(1 / s, 0.1)
        why = f"η·λ_max = {s:.3g} > {t:.3g}, too large a step for the sharpest direction"
    good = ev.good if ev.spike is not None else None
    back = f"roll back to update {good.step} and " if good is not None else ""

    def apply() -> dict[str, Any]:
        if good is not None:
            return treatments.roll_back(ev.model, ev.optimizer, ev.scheduler, good, factor)
        return treatments.change_lr(ev.optimizer, ev.scheduler, factor, "lower η")

    evidence = {"stability": s, "threshold": t, "update_ratio": r, "factor": factor}
    if ev.spike is not None:
        evidence.update(spike_update=ev.spike["step"], spike_loss=ev.spike["loss"])
    return Finding("update_ratio" if ev.by_update_ratio else "stability", r if ev.by_update_ratio else s,
                   f"{why}: {back}η ×{factor:.3g}", _on(ev.optimizer, apply), "step_too_large", evidence)


def exploding_gradient(ev: Evidence) -> Finding | None:
    """The gradient norm grew by orders of magnitude — a spike of ``‖g‖`` at least :data:`EXPLODE`
    times its recent median, a growth of :data:`EXPLODE` from
    the run's first updates, a non-finite gradient — or the first layer's gradient ``≫`` the last's:
    clip the global norm (Pascanu et al. 2013), after rolling back to the last good state when the
    explosion already damaged the net."""
    s, g, growth, ratio = ev.spike, ev.diagnosis.grad_norm, ev.grad_growth, ev.layer_ratio
    # the gradient burst a hundredfold over its recent median: a cliff (Pascanu et al. 2013), whether
    # the loss jumped with it or not — a step too large for the landscape (spike_damage) lifts the
    # gradient with the loss, by the same order (η = 2 on the digits MLP: loss ×8.5, ‖g‖ ×9; the
    # ReLU RNN's cliff: loss ×7, ‖g‖ ×150)
    burst = s is not None and (s.get("grad_ratio") or 0.0) >= EXPLODE
    grew = growth is not None and growth >= EXPLODE
    deep = ratio is not None and ratio > 1 / LAYER_RATIO and math.isfinite(g) and g > 1.0
    nan = not math.isfinite(g) and ev.diagnosis.method != "none"  # "none": no diagnosis was run
    if not (burst or grew or deep or nan):
        return None
    recent = [v for v in ev.grad_norms if math.isfinite(v)]
    if s is not None and s.get("grad_median"):
        recent = [s["grad_median"]]
    clip = ev.settings.clip_norm or (2 * median(recent) if recent and median(recent) > 0 else 1.0)
    good = ev.good if s is not None else None
    evidence = {"grad_norm": g, "grad_growth": growth, "first_over_last": ratio,
                "spike_update": None if s is None else s["step"],
                "grad_spike": None if s is None else s.get("grad_norm"),
                "grad_ratio": None if s is None else s.get("grad_ratio"), "clip_norm": clip}
    where = (f"‖g‖ = {s['grad_norm']:.3g} at update {s['step']}, {s['grad_ratio']:.3g}× its recent median" if burst
             else f"‖g‖ grew {growth:.3g}× since the run's first updates" if grew
             else f"first layer / last = {ratio:.3g}" if deep else f"‖∇L‖ = {g:.3g}")
    back = f"roll back to update {good.step}, then " if good is not None else ""
    return Finding("grad_norm", g, f"exploding gradients ({where}): {back}clip the gradient's global norm to"
                   f" {clip:.3g}", _on(ev.optimizer, lambda: ev.settings.install_clip(ev.optimizer, clip, good, ev.scheduler, ev.model)),
                   "exploding_gradient", evidence, dict(ev.layers) or None)


def degenerate(ev: Evidence) -> Finding | None:
    if ev.diagnosis.verdict != "degenerate":
        return None
    sigma = ev.settings.perturbation
    return Finding("curvature", 0.0, "degenerate point: gradient and Hessian both vanish, so second"
                   f" order shows no way out; a small random perturbation (σ = {sigma:g})",
                   lambda: ev.settings.perturb(ev.model), "degenerate",
                   {"grad_norm": ev.diagnosis.grad_norm, "lambda_max": ev.lam_max})


def dead_units(ev: Evidence) -> Finding | None:
    """Dead or saturated units: advice only — a step among the few units alive would not cure it."""
    if not ev.units_dead:
        return None
    share = ev.dead_share
    return Finding("units", share, f"{100 * share:.0f} % of the units are dead or saturated (they pass no"
                   f" gradient){_marginal_note(ev)}; remedy: {UNITS_REMEDY}", None, "dead_units",
                   {"units": share, "at_marginal": ev.at_marginal}, ev.units_by_layer())


def vanishing_gradient(ev: Evidence) -> Finding | None:
    """The first layer's gradient ``≪`` the last's: advice only (no change of η fixes a ratio)."""
    ratio = ev.layer_ratio
    if ratio is None or ratio >= LAYER_RATIO or ev.collapsed:
        return None
    names = list(ev.layers)
    return Finding("layers", ratio, f"vanishing gradients: ‖∇L‖ of the first layer ({names[0]}) is {ratio:.2g} of"
                   f" the last's ({names[-1]}){_marginal_note(ev)}; remedy: ReLU-type activations, Glorot/He"
                   " initialisation, normalisation (BatchNorm/LayerNorm) or residual connections, a shallower net",
                   None, "vanishing_gradient", {"first_over_last": ratio, "at_marginal": ev.at_marginal},
                   dict(ev.layers))


def needs_warmup(ev: Evidence) -> Finding | None:
    """An adaptive optimizer's first steps rewrote more than :data:`UPDATE_RATIO` of each weight
    (the median over its first updates) and the loss now sits at the labels' marginal entropy:
    the early steps, taken on a second moment estimated from a handful of gradients, wrecked the
    network (Liu et al. 2020; Xiong et al. 2020). Impose a warm-up from the state it is in.

    Measured on a post-LN char LM (batch 32, seed 0): the early ratio is 0.069 with Adam η = 1e-2
    from the first update (stuck at the unigram entropy 3.36), 0.0073 with the same η after 100
    updates of warm-up and 0.0008 with η = 1e-3 and warm-up (both learn); at the stall (update
    150) the failing run's ratio has fallen to 6e-5 — only the early one tells them apart."""
    r = ev.early_update_ratio
    if ev.optimizer is None or not adaptive(ev.optimizer) or r is None or r <= UPDATE_RATIO or not ev.at_marginal:
        return None
    n = ev.settings.warmup
    return Finding("update_ratio", r, f"Adam's first steps rewrote {100 * r:.2g} % of each weight per update"
                   f" (median) and{_marginal_note(ev)[1:]}: a warm-up is missing; reset the optimizer's moments,"
                   f" η back down and ramped over {n} updates, from the state after the first update",
                   lambda: ev.settings.start_warmup(ev.optimizer, ev.scheduler, n, ev.model), "needs_warmup",
                   {"early_update_ratio": r, "update_ratio": ev.update_ratio, "marginal": ev.marginal,
                    "loss": ev.loss, "first_over_last": ev.layer_ratio}, dict(ev.layers) or None)


def saturated_loss(ev: Evidence) -> Finding | None:
    """The loss saturates: cross-entropy's gradient at the outputs is :data:`SATURATION` times the
    loss's (MSE on softmax probabilities) — the lecture's plateau, a flat error surface the loss
    made. Remedy in words: cross-entropy on the logits; the treatment, that of a plateau (momentum
    for plain SGD, else η ×10), undone by the trial if it does not help."""
    r = ev.saturation
    if r is None or r < SATURATION or ev.critical:
        return None
    found = plateau_treatment(ev)
    return Finding("saturation", r, f"the loss saturates: cross-entropy's gradient at the outputs would be {r:.3g}×"
                   " its own (MSE on softmax probabilities is flat where cross-entropy is not): a plateau the loss"
                   f" makes; remedy: cross-entropy on the logits; meanwhile {found[0]}", found[1], "plateau",
                   {"saturation": r, "grad_norm": ev.diagnosis.grad_norm, "loss": ev.loss})


def plateau_treatment(ev: Evidence) -> tuple[str, Callable[[], dict[str, Any]] | None]:
    """What a plateau gets: momentum 0.9 for plain gradient descent, else η ×min(10, 1/stability)."""
    if ev.optimizer is None:
        return "pass the optimizer to act", None
    group = ev.optimizer.param_groups[0]
    if group.get("momentum") == 0 and not adaptive(ev.optimizer):
        return "momentum 0.9", lambda: treatments.add_momentum(ev.optimizer)
    s = ev.stability
    factor = 10.0 if s is None or not s > 0 else min(10.0, max(1.0, 1 / s))
    return f"η ×{factor:.3g}", lambda: treatments.change_lr(ev.optimizer, ev.scheduler, factor, "raise η")


def noisy_spike(ev: Evidence) -> Finding | None:
    """A spike in a run whose batch is far below the noise scale (``B/B_simple`` below
    :data:`NOISY_SPIKE` × ``batch_ratio``): the spike is the gradient noise itself, not damage —
    :func:`batch_noise`'s advice, nothing rolled back."""
    ratio = ev.batch_ratio
    if ev.spike is None or ratio is None or ratio >= NOISY_SPIKE * ev.settings.batch_ratio:
        return None
    return batch_noise(ev)


def saddle(ev: Evidence) -> Finding | None:
    """Negative curvature worth taking: at a critical point, where a layer's weights are all zero
    (the symmetric point of a zero initialisation, the lecture's saddle), or with ``|λ_min| ≥``
    :data:`SADDLE_SHARE` ``λ_max`` outside a crawl — negative curvature as strong as the positive.
    Every network shows some negative curvature away from a minimum; a weaker one is no reason to
    step along it, and in a crawl the step, not its direction, is what is wrong (GPT-2 at AdamW
    η = 1e-6 shows |λ_min| ≥ λ_max at its initialisation)."""
    d = ev.diagnosis
    worth = ev.critical or ev.collapsed or (not ev.crawling and abs(ev.lam_min) >= SADDLE_SHARE * ev.lam_max)
    if not d.negative_curvature or not worth:
        return None
    where = "saddle" if d.verdict == "saddle" else f"saddle's neighbourhood ({d.verdict.replace('_', ' ')})"
    return Finding("curvature", ev.lam_min, f"{where}: negative curvature λ_min = {ev.lam_min:.3g};"
                   " step along it (trainlab.escape)",
                   lambda: treatments.take_escape(ev.model, ev.loss_fn, ev.sample, d, ev.settings.batch_loss),
                   "saddle", {"lambda_min": ev.lam_min, "lambda_max": ev.lam_max, "grad_norm": d.grad_norm})


def step_too_small(ev: Evidence) -> Finding | None:
    """A crawl: ``η ← η · CRAWL_TARGET / stability``, with gradient noise ``÷ (1 + B_simple/B)`` (McCandlish
    et al. 2018, eq. 2.7)."""
    if not ev.crawling:
        return None
    s, ratio = ev.stability, ev.batch_ratio
    if ev.by_update_ratio:  # toward a ratio of UPDATE_RATIO / 10, the healthy Adam runs' order
        r = ev.update_ratio
        factor = min(1e3, 0.1 * UPDATE_RATIO / r) if r > 0 else 10.0
        return Finding("update_ratio", r, f"a crawl: each step rewrites {100 * r:.2g} % of every weight (median update"
                       f" ratio < {100 * CRAWL_RATIO:g} %): η ×{factor:.3g}",
                       _on(ev.optimizer, lambda: treatments.change_lr(ev.optimizer, ev.scheduler, factor, "raise η")),
                       "step_too_small", {"update_ratio": r, "stability": s, "factor": factor})
    factor = (CRAWL_TARGET / s if s > 0 else 10.0) / (1 + (1 / ratio if ratio else 0.0))
    if factor <= 1:
        return None
    bound = (f"η·λ_max = {CRAWL_TARGET:g}" if ratio is None
             else f"{CRAWL_TARGET:g}/λ_max ÷ (1 + B_simple/B), B_simple/B = {1 / ratio:.3g}")
    return Finding("stability", s, f"a crawl: η·λ_max = {s:.2g} ≪ 1 (‖∇L‖ = {ev.diagnosis.grad_norm:.2g}),"
                   f" the step is far below what the sharpest direction allows: η ×{factor:.3g} ({bound})",
                   _on(ev.optimizer, lambda: treatments.change_lr(ev.optimizer, ev.scheduler, factor, "raise η")),
                   "step_too_small", {"stability": s, "factor": factor})


def ill_conditioned_features(ev: Evidence) -> Finding | None:
    spread = ev.feature_spread
    if spread is None or spread <= FEATURE_SPREAD:
        return None
    return Finding("features", spread, f"the input columns' scales differ {spread:.3g}× (root-mean-square): an"
                   " elongated bowl no single η suits; remedy: standardise the features"
                   " (trainlab.nn.Standardizer) or add BatchNorm", None, "ill_conditioned_features",
                   {"feature_spread": spread})


def no_signal(ev: Evidence) -> Finding | None:
    """At the marginal entropy with nothing else wrong: the labels carry no signal from the inputs."""
    if not ev.at_marginal:
        return None
    return Finding("marginal", ev.marginal, f"the loss {ev.loss:.4g} sits at the labels' marginal entropy"
                   f" {ev.marginal:.4g} with units and gradients healthy: the model predicts the label frequencies"
                   " and nothing the inputs say; check that the labels belong to their inputs (shuffled or"
                   " misaligned labels, a broken pipeline)", None, "no_signal",
                   {"marginal": ev.marginal, "loss": ev.loss, "units": ev.dead_share, "first_over_last": ev.layer_ratio})


def batch_noise(ev: Evidence) -> Finding | None:
    """``B ≪ B_simple``: a larger batch — never above the data set — is suggested, nothing changed."""
    ratio = ev.batch_ratio
    if ratio is None or ratio >= ev.settings.batch_ratio:
        return None
    noise = ev.readings["noise_scale"]
    b = noise.get("batch_size", ev.batch_size)
    toward = noise["value"] if ev.data_size is None else min(noise["value"], ev.data_size)
    whole = ev.data_size is not None and noise["value"] >= ev.data_size
    return Finding("noise_scale", noise["value"], f"batch {b} ≪ B_simple = {noise['value']:.3g} (ratio {ratio:.2g}):"
                   f" gradient noise dominates each step; a larger batch (toward {toward:.0f}"
                   f"{', the whole data set' if whole else ''})", None, "batch_noise",
                   {"batch_over_noise": ratio, "noise_scale": noise["value"], "data_size": ev.data_size})


def plateau(ev: Evidence) -> Finding | None:
    d = ev.diagnosis
    if d.verdict != "not_critical" or d.negative_curvature or ev.crawling or ev.too_large:
        return None
    what, apply = plateau_treatment(ev)
    return Finding("grad_norm", d.grad_norm, f"not a critical point (‖∇L‖ = {d.grad_norm:.2g}) and no negative"
                   f" curvature: a plateau or a narrow valley; {what}", apply, "plateau",
                   {"grad_norm": d.grad_norm, "stability": ev.stability})


def local_minimum(ev: Evidence) -> Finding | None:
    """A local minimum or maximum — unless dead units or vanishing gradients explain the stall."""
    d = ev.diagnosis
    if d.verdict not in ("local_minimum", "local_maximum") or ev.units_dead or (
            ev.layer_ratio is not None and ev.layer_ratio < LAYER_RATIO):
        return None
    return Finding("curvature", ev.lam_min, f"a {d.verdict.replace('_', ' ')} at loss {d.loss:.4g} (no"
                   f" negative curvature, ‖∇L‖ = {d.grad_norm:.2g}): nothing local lowers the loss;"
                   " if it is too high, re-initialise, use a larger model, or add batch noise (smaller"
                   " batches)", None, d.verdict, {"lambda_min": ev.lam_min, "grad_norm": d.grad_norm})


#: Every rule, in priority order: the first finding is treated, the others are advice.
RULES: tuple[Callable[[Evidence], Finding | None], ...] = (
    ill_conditioned_features, needs_warmup, step_too_large, exploding_gradient, noisy_spike, spike_damage, degenerate,
    dead_units, vanishing_gradient, saturated_loss, saddle, step_too_small, no_signal, batch_noise, plateau,
    local_minimum)


def findings(ev: Evidence) -> list[Finding]:
    """Every rule's finding that holds, in :data:`RULES` order; never empty."""
    found = [f for f in (rule(ev) for rule in RULES) if f is not None]
    if not found:  # e.g. not critical with negative curvature not worth taking, and no optimizer to act on
        d = ev.diagnosis
        found.append(Finding("grad_norm", d.grad_norm, f"not a critical point (‖∇L‖ = {d.grad_norm:.2g}): a"
                             " plateau or a narrow valley; pass the optimizer to act", None, "plateau",
                             {"grad_norm": d.grad_norm}))
    return found
