"""The training-failure zoo: every case without and with the stall doctor (plus a Monitor), one table.

    OMP_NUM_THREADS=1 python benchmarks/zoo.py [--quick] [--cases a,b] [--out FILE.md]

``--quick`` builds every case at size "small" (seconds each) instead of "full". Per case: ground-truth
cause and onset, the update of the doctor's first event, the cause it named, its action, the final
held-out loss untreated / treated / of the healthy control, the events' cost (Hessian-vector products,
seconds, share of the treated run's time), false alarms on the healthy runs, and crashes; then the
summary lines of issue 22's "Must show".
"""

from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys

from trainlab.zoo import CASES, case as find_case, run_case

NO_WORSE = 1.02  # "no worse": treated final loss ≤ 1.02 × untreated (run-to-run noise of a changed trajectory)


def _f(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return "inf" if math.isinf(x) else f"{x:.{digits}g}"


def run(names: list[str], size: str) -> tuple[list[str], list[str]]:
    """Run the cases; return the table's lines and the summary's lines."""
    plain: dict[str, object] = {}

    def untreated(name: str):
        if name not in plain:
            plain[name] = run_case(find_case(name), size)
        return plain[name]

    rows = ["| case | architecture | cause (truth) | onset | first event | cause named | action | final untreated"
            " | treated | control | products | event s | share | false alarms | crash |",
            "|" + "---|" * 15]
    stats = {"failures": 0, "named": 0, "no_worse": 0, "treatable": 0, "within2": 0, "healthy": 0,
             "false_alarms": 0, "crashes": 0, "shares": [], "delays": []}
    for name in names:
        c = find_case(name)
        base = untreated(name)
        treated = run_case(c, size, doctor=True, monitor=True)
        control = untreated(c.control).final_loss if c.control else None
        first = treated.events[0] if treated.events else {}
        share = treated.event_seconds / treated.seconds if treated.seconds else 0.0
        crash = treated.crash or base.crash
        named = first.get("cause") or (f"({first.get('reading')}/{first.get('verdict')})" if first else "–")
        stats["crashes"] += crash is not None
        if treated.events:
            stats["shares"].append(share)
        if c.healthy:
            stats["healthy"] += 1
            stats["false_alarms"] += len(treated.events)
        else:
            stats["failures"] += 1
            stats["named"] += first.get("cause") == c.cause
            stats["no_worse"] += treated.final_loss <= NO_WORSE * base.final_loss
            if c.treatable:
                stats["treatable"] += 1
                stats["within2"] += control is not None and treated.final_loss <= 2 * control
            if first and c.onset is not None:
                stats["delays"].append(first["step"] - c.onset)
        row = [name, c.architecture, c.cause or "healthy", _f(c.onset), _f(first.get("step")), named,
               str(first.get("action") or "–"), _f(base.final_loss), _f(treated.final_loss), _f(control),
               str(treated.n_hvp), _f(treated.event_seconds, 2), f"{100 * share:.1f} %",
               str(len(treated.events)) if c.healthy else "", (crash or "").replace("|", "/")[:80]]
        rows.append("| " + " | ".join(row) + " |")
        print(rows[-1], flush=True)
    s = stats
    summary = [
        f"- causes named correctly: {s['named']}/{s['failures']} failure cases",
        f"- treated no worse than untreated (≤ {NO_WORSE} ×): {s['no_worse']}/{s['failures']}",
        f"- treatable cases within 2× the healthy control's final loss: {s['within2']}/{s['treatable']}",
        f"- false alarms on {s['healthy']} healthy runs: {s['false_alarms']}",
        f"- crashes: {s['crashes']}",
        f"- median cost share of runs with events: "
        + (f"{100 * statistics.median(s['shares']):.1f} %" if s["shares"] else "– (no events)"),
        f"- first event minus onset (updates): " + (", ".join(str(d) for d in s["delays"]) or "– (no events)"),
    ]
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help='size "small" instead of "full"')
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--out", default=None, help="write the table and summary to this markdown file")
    a = ap.parse_args(argv)
    names = a.cases.split(",") if a.cases else [c.name for c in CASES]
    size = "small" if a.quick else "full"
    start = datetime.datetime.now()
    rows, summary = run(names, size)
    text = "\n".join([f"zoo benchmark, size {size!r}, {start:%Y-%m-%d %H:%M}, command: python benchmarks/zoo.py "
                      + " ".join(argv if argv is not None else sys.argv[1:]), "", *rows, "", *summary, ""])
    print("\n".join(summary))
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
