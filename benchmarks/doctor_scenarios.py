"""The stall doctor's scenarios, each trained with and without it from the same seed and the
same budget (trainlab.experiments.stalls): does it notice, name the verdict, and get the run
moving — and stay quiet on a healthy run?

    python benchmarks/doctor_scenarios.py [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

from trainlab.experiments import stalls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print("| scenario | budget | loss after epoch 1 | final, no doctor | largest drift, no doctor |"
          " final, doctor | final ÷ start | doctor's events (step: verdict → action) | seconds (doctor) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, scenario in stalls.SCENARIOS.items():
        plain, treated = stalls.run(name, False, args.seed), stalls.run(name, True, args.seed)
        events = "; ".join(f"{e['step']}: {e['verdict']} → {e['action']}" for e in treated.events) or "none"
        print(f"| {name} | {scenario.epochs} epochs, batch {scenario.batch_size} | {plain.start:.4f} |"
              f" {plain.losses[-1]:.4f} | {100 * plain.largest_drift:.2f} % | {treated.losses[-1]:.4f} |"
              f" {treated.losses[-1] / treated.start:.3f} | {events} | {treated.seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
