"""``trainlab report RUN``: exit codes, one-line errors, and no file changed when it fails."""

import json
import shutil
from pathlib import Path

import pytest

from trainlab.cli import main

from cli_checks import error_line
from digests import tree_digest

QUICK = ["--set", "train.epochs=2", "--set", "data.name=iris", "--no-progress"]
READINGS = [{"step": s, "instrument": "sharpness", "value": 3.0 + s / 10, "seconds": 0.01, "n_hvp": 6}
            for s in (2, 4, 6)] + [{"step": 6, "instrument": "grad_norm", "value": 0.5, "seconds": 0.001,
                                    "parts": {"0.weight": 0.4, "0.bias": 0.1}}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real two-epoch run of `trainlab train` on iris, made once; each case copies it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *QUICK, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    return Path(shutil.copytree(trained, tmp_path / "run"))


def test_report_of_a_run_without_instruments(run, capsys):
    before = tree_digest(run)
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run / 'report.html'}"
    after = tree_digest(run)
    assert set(after) - set(before) == {"report.html"} and all(after[k] == v for k, v in before.items())
    text = (run / "report.html").read_text()
    assert "no instrument readings (train with --monitor)" in text and "data:image/png;base64," in text


def test_report_with_instruments_and_out(run, tmp_path, capsys):
    (run / "instruments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in READINGS) + '{"step": 8, "ins')
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert not (run / "report.html").exists() and capsys.readouterr().out.strip() == f"wrote {out}"
    text = out.read_text()
    assert text.count("class='instrument'") == 2 and "2/η, η of each update" not in text  # a figure, not text
    assert main(["report", str(run), "--out", str(out)]) == 0  # replaced in place, no temporary left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.html", "run"]


@pytest.mark.parametrize("damage, fragment", [
    (lambda run: (run / "steps.jsonl").write_text('{"step": 1, "loss": 2.0}\nnot json\n{"step": 3, "loss": 1.0}\n'),
     "steps.jsonl' line 2 is damaged (not a JSON record)"),
    (lambda run: (run / "instruments.jsonl").write_text('{"step": 2, "instrument": "gsnr", "value": "high"}\n'),
     "instruments.jsonl' line 1 is not a trainlab record: 'value' must be a number or null, found 'high'"),
    (lambda run: (run / "metrics.jsonl").write_text('[1, 2]\n{"epoch": 1, "step": 4}\n'),
     "metrics.jsonl' line 1 is not a trainlab record: expected a JSON object, found list"),
    (lambda run: (run / "config.toml").write_text("seed = = 0\n"), "config.toml' is not valid TOML"),
])
def test_damaged_files_are_one_line_exit_2_and_change_nothing(run, capsys, damage, fragment):
    (run / "report.html").write_text("an earlier report")
    damage(run)
    before = tree_digest(run)
    line = error_line(capsys, main(["report", str(run)]), 2)
    assert line.startswith("trainlab report: error: ") and fragment in line
    assert tree_digest(run) == before


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: tmp / "nowhere", "run directory '{}' does not exist"),
    (lambda tmp: (tmp / "notes.txt").write_text("x") and tmp / "notes.txt", "'{}' is a file, not a run directory"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty",
     "'{}' is not a run directory of `trainlab train`: it holds no metrics.jsonl or steps.jsonl"),
])
def test_not_a_run_directory_is_one_sentence_exit_2(tmp_path, capsys, make, fragment):
    path = make(tmp_path)
    before = tree_digest(tmp_path)
    line = error_line(capsys, main(["report", str(path)]), 2)
    assert line == f"trainlab report: error: {fragment.format(path)}; give the directory `trainlab train --out` wrote" \
        or line.endswith(fragment.format(path))
    assert tree_digest(tmp_path) == before


def test_bad_out(run, tmp_path, capsys):
    before = tree_digest(tmp_path)
    line = error_line(capsys, main(["report", str(run), "--out", str(tmp_path)]), 2)
    assert f"--out {str(tmp_path)!r} is a directory; give the file to write" in line
    line = error_line(capsys, main(["report", str(run), "--out", str(tmp_path / "no" / "r.html")]), 1)
    assert str(tmp_path / "no" / "r.html") in line  # the environment's fault: exit 1, naming the path
    assert tree_digest(tmp_path) == before
