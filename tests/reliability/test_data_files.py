"""Hostile user data files (``--set data.name=FILE``): refused with exit 2 and one line naming
the file and what is wrong, nothing written; a file we may not read is an environment fault
(exit 1). Also the data the issue says must be accepted as it is (a byte-order mark)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from reliability.conftest import assert_one_line, assert_unchanged, refused, run_cli, tree_hash, unprivileged

BASE = ["train", "--set", "model.hidden=[4]", "--set", "train.epochs=1", "--no-progress"]


def labels(n_per_class: int = 10, classes: int = 3) -> np.ndarray:
    return np.repeat(np.arange(classes), n_per_class)


def features(n: int = 30, d: int = 4) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, d))


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def csv(rows: list[list], header: str | None = None) -> bytes:
    lines = ([header] if header else []) + [",".join(str(c) for c in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def good_rows() -> list[list]:
    return [[*np.round(x, 3), int(y)] for x, y in zip(features(), labels())]


def with_label(y: np.ndarray, i: int, value) -> np.ndarray:
    y = y.astype(np.float64 if isinstance(value, float) else y.dtype).copy()
    y[i] = value
    return y


def x_with(i: int, j: int, value) -> np.ndarray:
    x = features()
    x[i, j] = value
    return x


def npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, features())
    return buf.getvalue()


def truncated_npz() -> bytes:
    whole = npz(x=features(), y=labels())
    return whole[: len(whole) // 2]


def zip_without_arrays() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "not arrays")
    return buf.getvalue()


def label_rows(y_values: list) -> list[list]:
    return [[*np.round(x, 3), y] for x, y in zip(features(), y_values)]


def case(id: str, name: str, content, *names: str):
    return pytest.param(name, content, names, id=id)


CASES = [
    case("npz-missing-y", "d.npz", lambda: npz(x=features()), "d.npz", "'y'"),
    case("npz-wrong-names", "d.npz", lambda: npz(inputs=features(), targets=labels()), "d.npz", "'x'"),
    case("npz-length-mismatch", "d.npz", lambda: npz(x=features(29), y=labels()), "d.npz", "29", "30"),
    case("npz-nan-input", "d.npz", lambda: npz(x=x_with(3, 1, np.nan), y=labels()), "d.npz", "nan", "3"),
    case("npz-inf-input", "d.npz", lambda: npz(x=x_with(7, 2, np.inf), y=labels()), "d.npz", "inf", "7"),
    case("npz-fractional-label", "d.npz", lambda: npz(x=features(), y=with_label(labels(), 4, 0.5)), "d.npz", "0.5"),
    case("npz-negative-label", "d.npz", lambda: npz(x=features(), y=with_label(labels(), 4, -1)), "d.npz", "-1"),
    case("npz-nan-label", "d.npz", lambda: npz(x=features(), y=with_label(labels(), 4, np.nan)), "d.npz", "nan"),
    # issue 12: one mistyped label (1000 among 0–2) silently built a 1001-class model
    case("npz-label-1000", "d.npz", lambda: npz(x=features(), y=with_label(labels(), 5, 1000)), "d.npz", "1000"),
    case("npz-empty-class", "d.npz", lambda: npz(x=features(), y=labels() * 2), "d.npz", "1"),
    case("npz-one-class", "d.npz", lambda: npz(x=features(), y=np.zeros(30, dtype=np.int64)), "d.npz", "class"),
    # issue 12: complex inputs lost their imaginary part
    case("npz-complex-input", "d.npz", lambda: npz(x=features() + 1j, y=labels()), "d.npz", "complex"),
    case("npz-complex-label", "d.npz", lambda: npz(x=features(), y=labels() + 0j), "d.npz", "complex"),
    case("npz-string-input", "d.npz", lambda: npz(x=features().astype(str), y=labels()), "d.npz", "x"),
    case("npz-object-input", "d.npz",
         lambda: npz(x=np.array([[1.0], "a"] * 15, dtype=object), y=labels()), "d.npz"),
    case("npz-one-hot-labels", "d.npz", lambda: npz(x=features(), y=np.eye(3)[labels()]), "d.npz", "(30, 3)"),
    case("npz-string-labels", "d.npz", lambda: npz(x=features(), y=np.array(["setosa", "versicolor", "other"] * 10)),
         "d.npz", "y"),
    case("npz-column-labels", "d.npz", lambda: npz(x=features(), y=labels()[:, None]), "d.npz", "(30, 1)"),
    case("npz-no-samples", "d.npz", lambda: npz(x=np.zeros((0, 4)), y=np.zeros(0, dtype=np.int64)), "d.npz"),
    case("npz-scalar-input", "d.npz", lambda: npz(x=np.float64(1.0), y=labels()), "d.npz", "scalar"),
    # issue 12: a .npy renamed .npz and a 0-byte .npz ended in tracebacks
    case("npy-renamed-npz", "d.npz", npy, "d.npz"),
    case("npz-zero-bytes", "d.npz", lambda: b"", "d.npz"),
    case("npz-truncated", "d.npz", truncated_npz, "d.npz"),
    case("npz-is-text", "d.npz", lambda: b"x,y\n1,0\n", "d.npz"),
    case("npz-zip-without-arrays", "d.npz", zip_without_arrays, "d.npz", "'x'"),
    case("csv-word-in-cell", "d.csv", lambda: csv(good_rows()[:5] + [[1, 2, "abc", 4, 0]] + good_rows()[5:]),
         "d.csv", "abc", "line 6"),
    case("csv-ragged-row", "d.csv", lambda: csv(good_rows()[:8] + [[1, 2, 0]] + good_rows()[8:]), "d.csv", "line 9"),
    case("csv-trailing-comma", "d.csv", lambda: csv(good_rows()[:3] + [[1, 2, 3, 4, ""]] + good_rows()[3:]),
         "d.csv", "line 4"),
    case("csv-semicolons", "d.csv", lambda: b"".join(b"1;2;3;4;%d\n" % (i % 3) for i in range(30)), "d.csv"),
    case("csv-overflowing-feature", "d.csv", lambda: csv(good_rows()[:2] + [[1, "1e400", 3, 4, 0]] + good_rows()[2:]),
         "d.csv", "inf"),
    case("csv-one-column", "d.csv", lambda: csv([[int(y)] for y in labels()]), "d.csv", "column"),
    case("csv-header-only", "d.csv", lambda: b"a,b,c,d,label\n", "d.csv", "no data"),
    case("csv-zero-bytes", "d.csv", lambda: b"", "d.csv"),
    case("csv-nan-feature", "d.csv", lambda: csv(label_rows(list(labels()))[:3] + [[1, "nan", 3, 4, 0]]
                                                 + label_rows(list(labels()))[3:29]), "d.csv", "nan"),
    case("csv-label-1000", "d.csv", lambda: csv(label_rows([*labels()[:29], 1000])), "d.csv", "1000"),
    case("csv-fractional-label", "d.csv", lambda: csv(label_rows([*labels()[:29], 1.5])), "d.csv", "1.5"),
    case("csv-one-class", "d.csv", lambda: csv(label_rows([0] * 30)), "d.csv", "class"),
    case("csv-not-utf8", "d.csv", lambda: b"\xff\xfe\x00\x81garbage\x00,1\n" * 10, "d.csv"),
    case("csv-complex-cells", "d.csv", lambda: csv(label_rows(list(labels())))[:-1] + b"\n1+2j,1,1,1,0\n",
         "d.csv", "1+2j"),
    case("unsupported-suffix", "d.txt", lambda: csv(good_rows()), "d.txt"),
]


@pytest.mark.parametrize("name, content, names", CASES)
def test_bad_data_file_is_refused(tmp_path, name, content, names):
    (tmp_path / name).write_bytes(content())
    refused([*BASE, "--set", f"data.name={tmp_path / name}", "--out", tmp_path / "run"], tmp_path, 2, names)


def test_unreadable_data_file_is_an_environment_fault(open_tmp):
    path = open_tmp / "d.npz"
    path.write_bytes(npz(x=features(), y=labels()))
    path.chmod(0o000)
    before = tree_hash(open_tmp)
    with unprivileged():
        result = run_cli([*BASE, "--set", f"data.name={path}", "--out", open_tmp / "run"], open_tmp)
    assert_one_line(result, 1, ["d.npz"])
    assert_unchanged(before, tree_hash(open_tmp))


def test_data_file_that_is_a_directory(tmp_path):
    (tmp_path / "d.npz").mkdir()
    refused([*BASE, "--set", f"data.name={tmp_path / 'd.npz'}", "--out", tmp_path / "run"], tmp_path, 2, ["d.npz"])


# ---------------------------------------------------------------- what must be accepted


def test_csv_byte_order_mark_keeps_the_first_row(tmp_path):
    """issue 12: a CSV with a byte-order mark lost its first row."""
    import trainlab as tl

    rows = good_rows()
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbf" + csv(rows))
    train, test = tl.data.load(tmp_path / "d.csv", test_fraction=0.0, standardize=False)
    assert len(train) + len(test) == len(rows)
    assert np.allclose(sorted(train.tensors[0][:, 0].tolist()), sorted(r[0] for r in rows), atol=1e-6)


def test_csv_byte_order_mark_with_header_trains(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbf" + csv(good_rows(), header="a,b,c,d,label"))
    result = run_cli([*BASE, "--set", f"data.name={tmp_path / 'd.csv'}", "--out", tmp_path / "run"], tmp_path)
    assert result.code == 0, result.err


def test_declared_num_classes_names_the_empty_ones(tmp_path):
    """Labels 0–2 with num_classes = 5: accepted, the empty classes 3 and 4 named in a warning."""
    import trainlab as tl

    (tmp_path / "d.npz").write_bytes(npz(x=features(), y=labels()))
    with pytest.warns(UserWarning) as record:
        tl.data.load(tmp_path / "d.npz", num_classes=5)
    text = " ".join(str(w.message) for w in record)
    assert "3" in text and "4" in text


def test_declared_num_classes_below_a_label_is_refused(tmp_path):
    import trainlab as tl
    from trainlab.errors import DataError

    (tmp_path / "d.npz").write_bytes(npz(x=features(), y=labels()))
    with pytest.raises(DataError, match="2"):
        tl.data.load(tmp_path / "d.npz", num_classes=2)


def test_declared_num_classes_warns_in_one_line_from_the_cli(tmp_path):
    """``data.num_classes`` above the labels present trains, and says which classes are empty in one line."""
    (tmp_path / "d.npz").write_bytes(npz(x=features(), y=labels()))
    result = run_cli([*BASE, "--set", f"data.name={tmp_path / 'd.npz'}", "--set", "data.num_classes=5",
                      "--out", tmp_path / "run"], tmp_path)
    assert result.code == 0, result.err
    assert len(result.lines) == 1 and "Traceback" not in result.err, result.err
    assert "3" in result.lines[0] and "4" in result.lines[0]
