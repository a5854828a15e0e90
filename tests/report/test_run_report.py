"""The run report (``trainlab.report.run_report``) on a synthetic run directory: hand-written
``config.toml``, ``metrics.jsonl``, ``steps.jsonl`` and ``instruments.jsonl``, so it does not
depend on the Monitor."""

import json
import math
import re
from pathlib import Path

import pytest

from trainlab.errors import ConfigError, DataError
from trainlab.report import run_report

CONFIG = """seed = 0

[data]
name = "digits"

[model]
name = "mlp"
hidden = [32, 32]
activation = "relu"

[optimizer]
name = "sgd"
lr = 0.05

[schedule]
name = "linear_warmup"

[train]
batch_size = 32
epochs = 3
loss = "cross_entropy"
"""

PARTS = ("0.weight", "0.bias", "2.weight", "2.bias")
EVENTS = [
    {"event": "stall", "epoch": 2, "step": 70, "verdict": "saddle", "action": "escape", "applied": True,
     "message": "saddle: λ_min = -0.31; escaped"},
    {"event": "stall", "epoch": 3, "step": 130, "verdict": "not_critical", "action": "raise η", "applied": True,
     "message": "raise η: η 0.005 → 0.05", "reading": "stability", "remedy": "a crawl: η·λ_max = 0.0007 ≪ 1"},
]


def lr_at(step):
    return 0.05 * min(1.0, step / 50)  # a warm-up, so 2/η moves


def readings():
    """Every instrument of the contract, every 10 updates, one failed reading."""
    out = []
    for step in range(10, 151, 10):
        lam = 5 + 30 * (1 - math.exp(-step / 40))
        eta = lr_at(step)
        out += [
            {"step": step, "instrument": "grad_norm", "value": 1.0 / step ** 0.5, "seconds": 0.002,
             "parts": {p: (i + 1) * 0.1 / step ** 0.5 for i, p in enumerate(PARTS)}},
            {"step": step, "instrument": "update_ratio", "value": 1e-3 * (1 + step / 100), "seconds": 0.001,
             "parts": {p: (i + 1) * 5e-4 for i, p in enumerate(PARTS)}},
            {"step": step, "instrument": "units", "value": min(0.5, step / 300), "seconds": 0.003,
             "parts": {"1": {"dead": min(0.5, step / 300), "saturated": 0.0},
                       "3": {"dead": 0.0, "saturated": 0.0}}},
            {"step": step, "instrument": "sharpness", "value": lam, "seconds": 0.05, "n_hvp": 7, "converged": True},
            {"step": step, "instrument": "stability", "value": eta * lam, "seconds": 0.05, "lambda_max": lam,
             "preconditioned": False, "threshold": 2.0},
            {"step": step, "instrument": "noise_scale", "value": 40.0 + step, "seconds": 0.02, "batch_size": 32,
             "batch_over_noise": 32 / (40.0 + step)},
            {"step": step, "instrument": "gsnr", "value": 0.2, "seconds": 0.02, "norm_test": 0.5},
        ]
    out.append({"step": 100, "instrument": "trace", "value": 120.0, "seconds": 0.2})
    out.append({"step": 150, "instrument": "trace", "value": None, "seconds": 0.2, "error": "out of memory"})
    return out


def write_lines(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def make_run(root: Path, instruments=True, events=True) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "config.toml").write_text(CONFIG)
    steps = [{"step": s, "epoch": (s - 1) // 50 + 1, "loss": 2.3 * math.exp(-s / 60) + 0.1, "grad_norm": 1.0,
              "lr": lr_at(s)} for s in range(1, 151)]
    write_lines(run / "steps.jsonl", steps)
    metrics = []
    for epoch in (1, 2, 3):
        metrics.append({"epoch": epoch, "step": 50 * epoch, "train_loss": 2.3 * math.exp(-epoch / 1.2),
                        "train_accuracy": 0.3 * epoch, "eval_loss": 2.4 * math.exp(-epoch / 1.3),
                        "eval_accuracy": 0.28 * epoch, "seconds": 0.1, "lr": lr_at(50 * epoch)})
        metrics += [e for e in (EVENTS if events else []) if e["epoch"] == epoch]
    write_lines(run / "metrics.jsonl", metrics)
    if instruments:
        write_lines(run / "instruments.jsonl", readings())
    return run


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("report"))
    path = run_report.write(run)
    return path, path.read_text()


def test_one_figure_per_instrument_and_self_contained(page):
    path, text = page
    assert path.name == "report.html"
    names = re.findall(r"<figure id='[^']*' class='instrument' data-instrument='([^']+)'", text)
    assert sorted(names) == sorted({r["instrument"] for r in readings()})
    # every figure embedded, and no external asset or link: the only URLs are data URIs and anchors
    depth = [n for n in ("grad_norm", "update_ratio") if f"id='fig-{n}_depth'" in text]  # the panels over depth
    assert depth == [n for n in ("grad_norm", "update_ratio")
                     if len({k for r in readings() if r["instrument"] == n for k in r.get("parts", {})}) >= 3]
    assert text.count("src='data:image/png;base64,") == len(names) + 3 + len(depth)  # loss, accuracy, learning rate
    assert not re.search(r"(?:src|href)=['\"](?!data:|#)", text)
    assert "http://" not in text and "https://" not in text and "<script" not in text and "<link" not in text
    assert "<meta name='viewport' content='width=device-width,initial-scale=1'>" in text


def test_events_configuration_and_failures_are_shown(page):
    _, text = page
    for i, event in enumerate(EVENTS, 1):
        row = f"<td class='event' data-label='mark'>E{i}</td><td class='num' data-label='update'>{event['step']}</td>"
        assert row in text
        assert event["message"].replace("'", "&#x27;") in text
    assert "saddle" in text and "not critical" in text
    assert "<td data-label='reading'>stability</td>" in text  # the reading the doctor acted on
    assert "raise η: η 0.005 → 0.05 — a crawl: η·λ_max = 0.0007 ≪ 1" in text  # and its reason
    assert "mlp [32, 32] (relu) on digits · sgd, η = 0.05" in text
    assert "1 reading failed (marked ✕), the first at update 150: out of memory." in text
    assert "No dead or saturated unit at any reading in layer 3." in text


def labels(fig):
    ax = fig.axes[0]
    return [line.get_label() for line in ax.get_lines()], [t.get_text() for t in ax.texts], ax


def test_sharpness_panel_draws_two_over_eta_following_the_schedule(tmp_path):
    run = run_report.read(make_run(tmp_path))
    fig = run_report.instrument_figure("sharpness", run.readings["sharpness"], run.events, run.learning_rates())
    names, texts, ax = labels(fig)
    assert "λ_max (sharpness)" in names and "2/η, η of each update" in names
    two_over_eta = ax.get_lines()[names.index("2/η, η of each update")]
    xs, ys = two_over_eta.get_data()
    assert list(xs) == list(range(1, 151)) and ys[0] == pytest.approx(2 / lr_at(1)) and ys[-1] == pytest.approx(40)
    assert texts == ["E1", "E2"]  # the events, labelled on the panel
    assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [70, 130]
    assert ax.get_xlabel() == "update (step)" and ax.get_ylabel()


def test_stability_noise_scale_and_parts_are_labelled():
    readings_ = readings()
    by = {}
    for r in readings_:
        by.setdefault(r["instrument"], []).append(r)
    names, _, ax = labels(run_report.instrument_figure("stability", by["stability"]))
    assert "divergence threshold 2" in names
    assert ax.get_lines()[names.index("divergence threshold 2")].get_ydata()[0] == 2
    names, _, ax = labels(run_report.instrument_figure("noise_scale", by["noise_scale"]))
    assert names[:2] == ["B_simple = tr(Σ)/‖G‖²", "batch size B (samples per update)"] and ax.get_yscale() == "log"
    fig = run_report.instrument_figure("grad_norm", by["grad_norm"])
    names, _, _ = labels(fig)
    assert names == ["‖∇L‖, all parameters", *PARTS]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == names  # many lines: the legend below the axes
    names, _, _ = labels(run_report.instrument_figure("units", by["units"]))
    assert names == ["dead or saturated, all layers", "1 dead"]  # shares at 0 throughout are left out
    for fig in (run_report.instrument_figure(n, rs) for n, rs in by.items()):
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert all(not line.get_label().startswith("_") for line in ax.get_lines())  # every line labelled


def test_run_without_instruments_says_so(tmp_path):
    run = make_run(tmp_path, instruments=False, events=False)
    text = run_report.write(run).read_text()
    assert run_report.NO_READINGS in text and "data-instrument" not in text
    assert "The stall doctor logged no event" in text and text.count("data:image/png") == 3


def test_damaged_line_is_named_and_torn_last_line_ignored(tmp_path):
    run = make_run(tmp_path)
    with open(run / "instruments.jsonl", "a") as f:
        f.write('{"step": 160, "instrum')  # a write cut short: ignored
    assert len(run_report.read(run).readings["grad_norm"]) == 15
    lines = (run / "instruments.jsonl").read_text().splitlines()
    lines[3] = lines[3][:20]
    (run / "instruments.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"instruments.jsonl' line 4 is damaged"):
        run_report.write(run)
    assert not (run / "report.html").exists()
    write_lines(run / "instruments.jsonl", [{"step": "ten", "instrument": "gsnr", "value": 1.0}])
    with pytest.raises(DataError, match=r"line 1 is not a trainlab record: it needs an integer 'step'"):
        run_report.read(run)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "is a file, not a run directory"),
    (lambda p: p, "is not a run directory of `trainlab train`"),
])
def test_not_a_run_directory(tmp_path, make, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        run_report.read(make(tmp_path))


def test_the_depth_panel_draws_every_tensor_first_to_last():
    """Vanishing gradients over 20 tensors (‖g‖ = 10^(i−19)·s for tensor i at update s): every
    tensor at the first, middle and last reading, in the model's order, on a log scale."""
    readings = [{"step": s, "instrument": "grad_norm", "value": 1.0,
                 "parts": {f"layer{i}.weight": 10.0 ** (i - 19) * s for i in range(20)}} for s in (10, 20, 30, 40, 50)]
    ax = run_report.depth_figure("grad_norm", readings).axes[0]
    lines = [line for line in ax.get_lines() if line.get_label().startswith("update")]
    assert [line.get_label() for line in lines] == ["update 10", "update 30", "update 50"]
    for line, s in zip(lines, (10, 30, 50)):
        assert list(line.get_xdata()) == list(range(20))
        assert list(line.get_ydata()) == pytest.approx([10.0 ** (i - 19) * s for i in range(20)], rel=1e-12)
    assert ax.get_yscale() == "log"
    assert len(run_report.depth_figure("grad_norm", readings[:1]).axes[0].get_lines()) == 1
    assert run_report.depth_figure("grad_norm", [{"step": 1, "value": 1.0, "parts": {"a": 1.0, "b": 2.0}}]) is None
    assert run_report.depth_figure("grad_norm", [{"step": 1, "value": 1.0}]) is None


def test_many_parts_are_capped_and_failed_panels_say_so(tmp_path):
    many = [{"step": s, "instrument": "grad_norm", "value": 1.0, "seconds": 0.0,
             "parts": {f"layer{i}.weight": float(i) for i in range(20)}} for s in (10, 20)]
    names, _, _ = labels(run_report.instrument_figure("grad_norm", many))
    # evenly spread over depth, first and last layer included: round(i·19/11), i = 0 … 11
    assert len(names) == 1 + run_report.MAX_PARTS
    assert names[1:] == [f"layer{round(i * 19 / 11)}.weight" for i in range(12)]
    failed = [{"step": s, "instrument": "gsnr", "value": None, "seconds": 0.0, "error": "boom"} for s in (10, 20)]
    _, texts, _ = labels(run_report.instrument_figure("gsnr", failed))
    assert "every reading failed" in texts
    run = make_run(tmp_path, instruments=False)
    write_lines(run / "instruments.jsonl", many + failed)
    text = run_report.write(run).read_text()
    assert ("Thin lines: 12 of the 20 parameter tensors, evenly spread from the first layer to the last (all of"
            " them in the panel over depth).") in text
    assert "fig-grad_norm_depth" in text and "Each of the 20 parameter tensors, in the model" in text
    assert "2 readings failed (marked ✕), the first at update 10: boom" in text
