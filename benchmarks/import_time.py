"""Start-up time: ``import trainlab`` and ``trainlab --help`` against ``import torch``.

Each command runs in a fresh interpreter (one thread: ``OMP_NUM_THREADS=1``), ``--reps``
times, rounds interleaved so that machine noise hits every command alike; the table gives
the median wall time and its ratio to ``python -c "import torch"``. The target for
``trainlab --help`` is a ratio ≤ 2.0. It also lists the heavy packages each command loads
(scikit-learn, SciPy, matplotlib, mnist1d), which it should not need.

    python benchmarks/import_time.py [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

TARGET = 2.0
HEAVY = ("sklearn", "scipy", "matplotlib", "mnist1d", "trainlab.experiments", "trainlab.report")
COMMANDS = {
    "import torch": ["-c", "import torch"],
    "import trainlab": ["-c", "import trainlab"],
    "import trainlab.cli": ["-c", "import trainlab.cli"],
    "trainlab --help": ["-m", "trainlab", "--help"],
    "trainlab diagnose --help": ["-m", "trainlab", "diagnose", "--help"],
}
#: What each command imports, printed after the timings.
PROBES = {
    "import trainlab": "import trainlab",
    "trainlab --help": "import trainlab.cli; trainlab.cli.parser()",
}


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env(), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def heavy_modules(code: str) -> list[str]:
    probe = f"import sys; {code}; print(' '.join(sorted(m for m in sys.modules if m in {HEAVY!r})))"
    out = subprocess.run([sys.executable, "-c", probe], env=env(), check=True, capture_output=True, text=True)
    return out.stdout.split()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5, help="runs of each command (default 5)")
    args = p.parse_args()
    seconds(COMMANDS["import torch"])  # warm the file cache once, untimed
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.reps):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    base = statistics.median(times["import torch"])
    print(f"python {sys.version.split()[0]}, {args.reps} fresh processes each, OMP_NUM_THREADS=1\n")
    print(f"{'command':<28} {'median s':>9} {'min s':>7} {'× import torch':>15}")
    for name, values in times.items():
        print(f"{name:<28} {statistics.median(values):>9.3f} {min(values):>7.3f}"
              f" {statistics.median(values) / base:>15.2f}")
    ratio = statistics.median(times["trainlab --help"]) / base
    print(f"\ntrainlab --help / import torch = {ratio:.2f} (target ≤ {TARGET}): {'met' if ratio <= TARGET else 'NOT met'}")
    for name, code in PROBES.items():
        loaded = heavy_modules(code)
        print(f"{name} loads: {', '.join(loaded) if loaded else 'none of ' + ', '.join(HEAVY)}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
