"""The training-failure zoo: small seeded training setups, each with its ground-truth cause, and
healthy controls — the stall doctor's test bench (issue 22).

``CASES`` lists every case once; :func:`case` finds one by name; :func:`run_case` trains it as its
users would, without or with the doctor. ``python benchmarks/zoo.py`` runs them all.
"""

from __future__ import annotations

from trainlab.errors import ConfigError
from trainlab.zoo import hf, language, lightning, mlp
from trainlab.zoo.case import CAUSES, SIZES, TREATABLE, Case, Setup
from trainlab.zoo.runner import EVAL_SAMPLES, RunResult, event_summary, final_loss, run_case

#: Every case, failures first, then the healthy controls.
CASES: list[Case] = [*mlp.CASES, *language.CASES, *hf.CASES, *lightning.CASES]
CASES.sort(key=lambda c: c.healthy)  # failures first


def case(name: str) -> Case:
    """The case called ``name``."""
    for c in CASES:
        if c.name == name:
            return c
    raise ConfigError(f"zoo: case {name!r} does not exist; use one of {[c.name for c in CASES]}")


__all__ = ["CASES", "CAUSES", "EVAL_SAMPLES", "SIZES", "TREATABLE", "Case", "RunResult", "Setup", "case",
           "event_summary", "final_loss", "run_case"]
