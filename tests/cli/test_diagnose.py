import json

from trainlab.cli import main


def test_train_with_doctor_then_diagnose(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--set", "data.name=iris", "--set", "train.epochs=2", "--out", str(out), "--doctor",
                 "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["events"] == []  # a healthy run: no event
    capsys.readouterr()
    assert main(["diagnose", str(out), "--density"]) == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "minimum ratio" in printed and "gradient norm" in printed
    assert (out / "spectrum.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["diagnose", str(out / "checkpoint.pt"), "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()


def test_diagnose_bad_path_is_exit_2(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a run directory or checkpoint" in err[0]
