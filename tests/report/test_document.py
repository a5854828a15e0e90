import json

from trainlab.cli import main
from trainlab.experiments import Config, momentum
from trainlab.report import document


def test_report_files(tmp_path):
    result = momentum.run(Config(quick=True, progress=False))
    paths = document.write({"momentum": result}, tmp_path, seed=0, seconds=1.5)
    doc = json.loads(paths["json"].read_text())
    assert doc["seed"] == 0 and doc["seconds"] == 1.5
    claims = doc["experiments"]["momentum"]["claims"]
    assert [c["text"] for c in claims] == [c.text for c in result.claims]
    assert all(set(c) >= {"text", "held", "evidence"} for c in claims)
    for figure in doc["experiments"]["momentum"]["figures"]:
        assert (tmp_path / figure["file"]).read_bytes()[:4] == b"\x89PNG"
    html = paths["html"].read_text()
    assert html.count("<img class='wide") == len(result.figures)
    assert html.count("src='data:image/png;base64,") == html.count("<img ")  # self-contained
    assert "name='viewport'" in html and "held" in html and "Quick run (--quick)" in html
    md = paths["markdown"].read_text()
    assert all(document.unicode_text(c.text, fallback="html").replace("|", "\\|") in md for c in result.claims)
    table = document.claims_table({"momentum": result})
    assert table.splitlines()[-1].startswith(document.count_line({"momentum": result}) + ". Quick run")


def test_demo_cli(tmp_path, capsys):
    assert main(["demo", "--quick", "--only", "momentum,classification", "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert " held, " in out and " inconclusive, " in out and "report of a quick run: " in out and "index.html" in out
    doc = json.loads((tmp_path / "r" / "results.json").read_text())
    assert list(doc["experiments"]) == ["momentum", "classification"]
    assert main(["experiment", "momentum", "--quick", "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    assert (tmp_path / "one" / "index.html").exists()


def test_unknown_experiment_is_exit_2(tmp_path, capsys):
    assert main(["demo", "--only", "magic", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown experiment 'magic'; use one of: critical_points" in err[0]
