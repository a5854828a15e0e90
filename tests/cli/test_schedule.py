import pytest

from trainlab.cli import main


def test_plot_writes_a_png(tmp_path, capsys):
    out = tmp_path / "lr.png"
    assert main(["schedule", "plot", "warmup_cosine", "--set", "warmup_steps=10", "--set", "total_steps=100",
                 "--lr", "0.5", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "peak 0.5 at update 9" in printed and "over 100 updates" in printed


@pytest.mark.parametrize("args, fragment", [
    (["cosine"], "unknown schedule 'cosine'; use one of: constant, step_decay"),
    (["step_decay"], "schedule step_decay needs step_size"),
    (["linear_warmup", "--set", "warmup_steps=0"], "linear_warmup: warmup_steps=0 is not allowed"),
    (["constant", "--set", "gamma=0.5"], "schedule constant takes no 'gamma'"),
    (["constant", "--steps", "0"], "--steps 0 is not allowed"),
])
def test_bad_schedule_arguments_exit_2(tmp_path, capsys, args, fragment):
    assert main(["schedule", "plot", *args, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
    assert not (tmp_path / "x.png").exists()
