"""Checks shared by the command-line tests."""


def error_line(capsys, code: int, expected: int = 2) -> str:
    """The one line the command wrote to stderr, after checking its exit ``code`` is ``expected``,
    that stderr holds exactly one line and no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == expected, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
