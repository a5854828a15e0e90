"""``trainlab report RUN`` writes a page whatever strings and numbers the run's files hold
(issue 21, item 4): ``$…$`` and backslashes (matplotlib's mathtext) in the configuration,
instrument names and part names, TOML dates and times, ``<script>`` (the page escapes it),
non-ASCII and emoji, very long strings, and values at or past a float's range (1e308, ±inf,
NaN, 5,000-digit integers) — exit 0, nothing on stderr, no other file touched, every hostile
string shown escaped, one panel per instrument and a note where values could not be drawn.
Each run directory is written by hand here (independent of the Trainer and the Monitor)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pytest

from reliability.conftest import assert_unchanged, refused, run_cli, tree_hash

CONFIG = """seed = 0

[data]
name = "iris"

[model]
name = "mlp"
hidden = [4]
activation = "relu"

[optimizer]
name = "sgd"
lr = 0.05

[train]
batch_size = 16
epochs = 2
loss = "cross_entropy"
"""

STEPS = 20


def lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def reading(step: int, value, instrument: str = "grad_norm", **extra) -> dict:
    return {"step": step, "instrument": instrument, "value": value, "seconds": 0.001, **extra}


def default_readings() -> list[dict]:
    return [reading(s, 1.0 / s, parts={"0.weight": 0.5 / s, "0.bias": 0.1 / s}) for s in range(5, STEPS + 1, 5)]


def make_run(root: Path, config: str = CONFIG, readings: str | None = None, steps: str | None = None,
             metrics: str | None = None, events: list[dict] = ()) -> Path:
    """A run directory of two epochs of ten updates, with ``grad_norm`` read every five; any of
    its files' text replaced by the case's."""
    run = root / "run"
    run.mkdir()
    (run / "config.toml").write_text(config, encoding="utf-8")
    (run / "steps.jsonl").write_text(steps if steps is not None else lines(
        [{"step": s, "epoch": (s - 1) // 10 + 1, "loss": 1.1 - 0.02 * s, "grad_norm": 1.0, "lr": 0.05}
         for s in range(1, STEPS + 1)]), encoding="utf-8")
    epochs = [{"epoch": e, "step": 10 * e, "train_loss": 1.0 / e, "train_accuracy": 0.3 * e, "eval_loss": 1.1 / e,
               "eval_accuracy": 0.25 * e, "seconds": 0.1, "lr": 0.05} for e in (1, 2)]
    (run / "metrics.jsonl").write_text(metrics if metrics is not None else lines(epochs + list(events)),
                                       encoding="utf-8")
    (run / "instruments.jsonl").write_text(readings if readings is not None else lines(default_readings()),
                                           encoding="utf-8")
    return run


def page_of(run: Path, tmp_path: Path) -> str:
    """``trainlab report RUN``: exit 0, stderr empty, only report.html new; the page's text."""
    before = tree_hash(tmp_path)
    result = run_cli(["report", run], tmp_path)
    assert result.code == 0 and not result.err.strip(), f"exit {result.code}:\n{result.err[-3000:]}"
    assert_unchanged(before, tree_hash(tmp_path), allowed_new=["report.html"])
    page = (run / "report.html").read_text(encoding="utf-8")
    for uri in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        assert base64.b64decode(uri).startswith(b"\x89PNG"), "an embedded figure is not a PNG"
    assert "<script" not in page.lower(), "markup from the run's files reached the page unescaped"
    return page


def shown(value) -> str:
    """How the page's configuration table shows ``value``: its JSON, escaped."""
    return html.escape(json.dumps(value, ensure_ascii=False))


# ---------------------------------------------------------------- the configuration

LONG = "x" * 100_000
#: ``(TOML text replacing a line of CONFIG or added, fragments the page must show)``
CONFIGS = [
    pytest.param(('name = "iris"', "name = '$\\frac{1}{$'"), [shown("$\\frac{1}{$")], id="data-name-mathtext"),
    pytest.param(('name = "mlp"', "name = '$x$'"), [shown("$x$")], id="model-name-dollars"),
    pytest.param(('name = "sgd"', "name = '$'"), [shown("$")], id="optimizer-name-unbalanced-dollar"),
    pytest.param(('activation = "relu"', "activation = '\\'"), [shown("\\")], id="activation-backslash"),
    pytest.param(('activation = "relu"', "activation = '<script>alert(1)</script>'"),
                 [shown("<script>alert(1)</script>")], id="activation-script"),
    pytest.param(("seed = 0", 'seed = 0\n"<b>$\\\\alpha$</b>" = 1'), [html.escape("<b>$\\alpha$</b>")],
                 id="key-markup-and-mathtext"),
    pytest.param(("seed = 0", "seed = 0\ncreated = 1979-05-27T07:32:00Z"), ["1979-05-27T07:32:00"],
                 id="toml-offset-datetime"),
    pytest.param(("seed = 0", "seed = 0\nday = 1979-05-27"), ["1979-05-27"], id="toml-local-date"),
    pytest.param(("seed = 0", "seed = 0\nat = 07:32:00.999"), ["07:32:00.999"], id="toml-local-time"),
    pytest.param(("seed = 0", "seed = 0\nwhen = [1979-05-27T07:32:00, {d = 2000-01-01}]"), ["2000-01-01"],
                 id="toml-datetimes-nested"),
    pytest.param(('name = "iris"', f"name = '{LONG}'"), [LONG], id="data-name-100k-characters"),
    pytest.param(('name = "iris"', "name = 'données 数据 🚀 λ̃'"), [shown("données 数据 🚀 λ̃")],
                 id="data-name-emoji"),
    pytest.param(("lr = 0.05", "lr = inf"), ["Infinity"], id="lr-inf"),
    pytest.param(("lr = 0.05", "lr = nan"), ["NaN"], id="lr-nan"),
    pytest.param(("lr = 0.05", "lr = 1e308"), ["1e+308"], id="lr-1e308"),
    pytest.param(("batch_size = 16", "batch_size = '$\\frac'"), [shown("$\\frac")], id="batch-size-mathtext"),
    pytest.param(("[optimizer]\nname = \"sgd\"\nlr = 0.05", "optimizer = '$\\sqrt{'"), [shown("$\\sqrt{")],
                 id="optimizer-not-a-table"),
]


@pytest.mark.parametrize("edit, fragments", CONFIGS)
def test_hostile_configuration_values_get_a_page(tmp_path, edit, fragments):
    """issue 21: a TOML datetime in config.toml was json.dumps' TypeError; mathtext and markup
    must reach neither matplotlib's parser nor the page unescaped."""
    old, new = edit
    assert old in CONFIG
    config = CONFIG.replace(old, new)
    page = page_of(make_run(tmp_path, config=config), tmp_path)
    for fragment in fragments:
        assert fragment in page, fragment[:80]
    assert page.count("class='instrument'") == 1


# ---------------------------------------------------------------- names in the logs

NAMES = ["$\\frac{1}{$", "$x^$", "$x$", "$", "\\", "a_b^c{", "<script>alert(1)</script>", "🚀 λ̃ données",
         "$\\frac", "$\\mathrm{oops}", "n" * 1_000, "'quote\"", "line\nbreak", "%s %d {}"]
NAME_IDS = ["frac-unclosed-brace", "superscript-of-nothing", "dollars", "one-dollar", "backslash", "sub-sup-brace",
            "script", "emoji", "frac-one-dollar", "mathrm", "1000-chars", "quotes", "newline", "format-codes"]


@pytest.mark.parametrize("name", NAMES, ids=NAME_IDS)
def test_hostile_instrument_names_get_a_page(tmp_path, name):
    """issue 21: an instrument named ``$\\frac`` reached matplotlib's mathtext parser as a title."""
    readings = default_readings() + [reading(s, 2.0 * s, instrument=name) for s in (5, 10, 15, 20)]
    page = page_of(make_run(tmp_path, readings=lines(readings)), tmp_path)
    assert page.count("class='instrument'") == 2  # grad_norm and the hostile one
    assert html.escape(" ".join(name.split())) in " ".join(page.split())


@pytest.mark.parametrize("name", NAMES[:8], ids=NAME_IDS[:8])
def test_hostile_part_names_get_a_page(tmp_path, name):
    """Per-tensor part names go to the legend, and units' layer names to the caption."""
    readings = [reading(s, 1.0 / s, parts={name: 0.5 / s, "0.bias": 0.1 / s}) for s in (5, 10, 15, 20)]
    readings += [reading(s, 0.0, instrument="units", parts={name: {"dead": 0.0, "saturated": 0.0}})
                 for s in (5, 10, 15, 20)]
    page = page_of(make_run(tmp_path, readings=lines(readings)), tmp_path)
    assert page.count("class='instrument'") == 2
    assert html.escape(name) in page  # units: "no dead or saturated unit ... in layer NAME"


EVENT_TEXT = [pytest.param({"message": "$\\frac{", "verdict": "<script>x</script>"}, id="message-mathtext"),
              pytest.param({"message": "<script>alert(1)</script>", "remedy": "$x$ 🚀"}, id="message-script"),
              pytest.param({"message": "m" * 50_000, "action": "\\"}, id="message-50k-characters")]


@pytest.mark.parametrize("event", EVENT_TEXT)
def test_hostile_event_text_gets_a_page(tmp_path, event):
    event = {"event": "stall", "epoch": 2, "step": 12, **event}
    page = page_of(make_run(tmp_path, events=[event]), tmp_path)
    assert html.escape(event["message"]) in page


# ---------------------------------------------------------------- numbers at and past a float's range

BIG = "9" * 5_000  # an integer JSON can hold and Python's int() refuses beyond 4,300 digits by default


def values(*vs) -> str:
    return lines([reading(5 * (i + 1), v) for i, v in enumerate(vs)])


#: ``(the instruments.jsonl text, notes the page must hold)``
VALUES = [
    pytest.param(values(1e308, -1e308, 1.0, 2.0), ["2 reading values not drawn"], id="plus-and-minus-1e308"),
    pytest.param(values(1e308, 1e308, 1e308, 1e308), ["4 reading values not drawn"], id="all-1e308"),
    pytest.param(values(5e-324, 1e308, 1.0, 1e-300), ["1 reading value not drawn"], id="subnormal-to-1e308"),
    pytest.param(values(-1e308, -1e308, 1e-300, 0.0), ["2 reading values not drawn"], id="negative-1e308"),
    pytest.param(values(None, None, None, 1.0), ["3 readings failed"], id="three-null"),
    pytest.param(values(None, None, None, None), ["4 readings failed"], id="all-null"),
    pytest.param(lines([reading(5, 1.0, parts={"a": 1e308, "b": -1e308}), reading(10, 2.0, parts={"a": 1.0})]), [],
                 id="parts-1e308"),
    pytest.param(lines([reading(5, 1.0, instrument="stability", threshold=1e308),
                        reading(10, 2.0, instrument="stability", threshold=-1e308)]), [], id="threshold-1e308"),
    pytest.param(lines([reading(5, 1.0, instrument="noise_scale", batch_size=1e308),
                        reading(10, 1e308, instrument="noise_scale", batch_size=16)]), ["1 reading value not drawn"],
                 id="noise-scale-1e308"),
    pytest.param(lines([reading(5, 1.0, instrument="sharpness", n_hvp=1e308),
                        reading(4 * 10 ** 18, 2.0, instrument="sharpness")]), [], id="step-4e18"),
]


@pytest.mark.parametrize("text, notes", VALUES)
def test_values_past_a_floats_range_get_a_page(tmp_path, text, notes):
    """issue 21: ±1e308 overflowed matplotlib's tick arithmetic (a traceback while drawing); the
    page draws what is within ±1e100 and says how many values it could not draw."""
    page = page_of(make_run(tmp_path, readings=text), tmp_path)
    assert page.count("class='instrument'") == 1
    for note in notes:
        assert note in page, note


def raw(texts: list[str], template: str) -> str:
    """Lines written verbatim (Infinity, NaN, 5,000 digits: what json.dumps never writes)."""
    return "".join(template.format(step=5 * (i + 1), v=t) + "\n" for i, t in enumerate(texts))


READING = '{{"step": {step}, "instrument": "grad_norm", "value": {v}, "seconds": 0.001}}'
STEP = '{{"step": {step}, "loss": {v}, "lr": 0.05}}'
#: ``(file, its text)``: numbers JSON-lines readers disagree on; the report refuses the line (one
#: sentence naming the file and the line, from the log reader) rather than draw a guess.
NOT_NUMBERS = [
    pytest.param("instruments.jsonl", raw(["Infinity", "1.0", "2.0"], READING), id="reading-Infinity"),
    pytest.param("instruments.jsonl", raw(["1.0", "-Infinity", "2.0"], READING), id="reading-minus-Infinity"),
    pytest.param("instruments.jsonl", raw(["1.0", "2.0", "NaN"], READING), id="reading-NaN"),
    pytest.param("instruments.jsonl", raw([BIG, "1.0", "2.0"], READING), id="reading-5000-digits"),
    pytest.param("instruments.jsonl", raw(["1.0", "-" + BIG, "2.0"], READING), id="reading-minus-5000-digits"),
    pytest.param("instruments.jsonl", raw(["1e400", "1.0", "2.0"], READING), id="reading-1e400"),
    pytest.param("steps.jsonl", raw(["Infinity", "1.0", "2.0"], STEP), id="loss-Infinity"),
    pytest.param("steps.jsonl", raw(["1.0", "NaN", "2.0"], STEP), id="loss-NaN"),
    pytest.param("steps.jsonl", raw(["1.0", "2.0", BIG], STEP), id="loss-5000-digits"),
]


@pytest.mark.parametrize("name, text", NOT_NUMBERS)
def test_numbers_json_does_not_have_are_refused_in_one_line(tmp_path, name, text):
    run = make_run(tmp_path, **{"readings" if name == "instruments.jsonl" else "steps": text})
    refused(["report", run], tmp_path, 2, [name, "line"])


#: ``(steps.jsonl text, notes)``: the training curves with values past a float's range.
CURVES = [
    pytest.param(lines([{"step": s, "loss": 1e308 if s % 2 else -1e308, "lr": 0.05} for s in range(1, 21)]),
                 ["20 loss values not drawn"], id="loss-plus-minus-1e308"),
    pytest.param(lines([{"step": s, "loss": None, "lr": 0.05} for s in range(1, 21)]), ["20 loss values not drawn"],
                 id="loss-all-null"),
    pytest.param(lines([{"step": s, "loss": None if s < 15 else 1.0, "lr": 0.05} for s in range(1, 21)]),
                 ["14 loss values not drawn"], id="loss-mostly-null"),
    pytest.param(lines([{"step": s, "loss": 1.0, "lr": 1e-320 if s < 10 else 1e308} for s in range(1, 21)]), [],
                 id="lr-subnormal-to-1e308"),
]


@pytest.mark.parametrize("text, notes", CURVES)
def test_curves_past_a_floats_range_get_a_page(tmp_path, text, notes):
    readings = lines([reading(s, 5.0, instrument="sharpness") for s in (5, 10, 15, 20)])
    page = page_of(make_run(tmp_path, steps=text, readings=readings), tmp_path)
    for note in notes:
        assert note in page, note


def test_metrics_past_a_floats_range_get_a_page(tmp_path):
    metrics = lines([{"epoch": e, "step": 10 * e, "train_loss": 1e308, "train_accuracy": 1e308,
                      "eval_loss": -1e308, "eval_accuracy": None, "seconds": 1e308} for e in (1, 2)])
    page = page_of(make_run(tmp_path, metrics=metrics), tmp_path)
    assert "training loss 1e+308" in page
