"""The stall doctor's scenarios, each trained with and without it from the same seed and the
same budget (trainlab.experiments.stalls): does it notice, in time, name the reading and the
remedy, get the run moving — and stay quiet on a healthy run?

Time to event = the doctor's first event − the stall's onset in the untreated run (the first
update from which its loss falls by less than 1 % over every later window: 30 updates
full-batch, 100 mini-batch; see ``Outcome.onset``). The promise: within 60 updates full-batch,
within two windows (200) mini-batch.

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
    print("| scenario | budget | loss after epoch 1 | final, no doctor | final, doctor | onset (update) |"
          " first event (update) | time to event (promise) | reading → action | events (step: verdict, reading →"
          " action) | seconds (doctor) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, scenario in stalls.SCENARIOS.items():
        plain, treated = stalls.run(name, False, args.seed), stalls.run(name, True, args.seed)
        onset, event = plain.onset(), treated.first_event()
        promise = 60 if plain.full_batch else 200
        late = "none" if event is None else f"{event - onset} ({'≤' if event - onset <= promise else '>'} {promise})"
        first = f"{treated.events[0]['reading']} → {treated.events[0]['action']}" if treated.events else "—"
        events = "; ".join(f"{e['step']}: {e['verdict']}, {e['reading']} → {e['action']}" for e in treated.events)
        print(f"| {name} | {scenario.epochs} epochs, batch {scenario.batch_size} | {plain.start:.4f} |"
              f" {plain.losses[-1]:.4f} | {treated.losses[-1]:.4f} | {onset} | {event if event is not None else '—'} |"
              f" {late} | {first} | {events or 'none'} | {treated.seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
