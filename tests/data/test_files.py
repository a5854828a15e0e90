import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trainlab as tl
from trainlab.errors import ConfigError, DataError

from digests import tree_digest
from tolerance import tol


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 3)), np.repeat(np.arange(3), 20)


def test_npz_round_trip(tmp_path, xy):
    x, y = xy
    np.savez(tmp_path / "d.npz", x=x, y=y)
    train, test = tl.data.load(tmp_path / "d.npz", standardize=False)
    got_x = torch.cat([train.tensors[0], test.tensors[0]]).double()
    got_y = torch.cat([train.tensors[1], test.tensors[1]])
    assert len(train) == 48 and len(test) == 12
    # every (x, y) pair survives the split unchanged
    expected = {tuple(np.round(r, 5)) + (int(c),) for r, c in zip(x, y)}
    assert {tuple(np.round(r.numpy(), 5)) + (int(c),) for r, c in zip(got_x, got_y)} == expected


def test_npz_keeps_image_shape(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 1, 4, 4))
    np.savez(tmp_path / "img.npz", x=x, y=np.arange(20) % 2)
    train, _ = tl.data.load(tmp_path / "img.npz")
    assert train.tensors[0].shape[1:] == (1, 4, 4)


@pytest.mark.parametrize("header", [True, False])
def test_csv_with_and_without_header(tmp_path, xy, header):
    x, y = xy
    lines = (["a,b,c,label"] if header else []) + [",".join(map(str, [*r, c])) for r, c in zip(x, y)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    train, test = tl.data.load(tmp_path / "d.csv", standardize=False)
    assert len(train) + len(test) == 60
    assert tl.data.num_classes(train, test) == 3
    np.testing.assert_allclose(np.sort(torch.cat([train.tensors[0], test.tensors[0]])[:, 0].numpy()),
                               np.sort(x[:, 0]), rtol=tol(torch.float32))  # each value rounded once to float32


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        tl.data.load(tmp_path / "nope.npz")


def test_wrong_keys(tmp_path):
    np.savez(tmp_path / "d.npz", inputs=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(DataError, match=r"\['inputs', 'labels'\].*'x' and 'y'"):
        tl.data.load(tmp_path / "d.npz")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs(tmp_path, xy, bad):
    x, y = xy
    x[7, 2] = bad
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match="sample 7, feature 2; inputs must be finite"):
        tl.data.load(tmp_path / "d.npz")


@pytest.mark.parametrize("label", [-1, 1.5, np.nan])
def test_labels_not_integers_in_range(tmp_path, xy, label):
    x, y = xy
    y = y.astype(float)
    y[4] = label
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"at sample 4 .*integers in \[0, n_classes\)"):
        tl.data.load(tmp_path / "d.npz")


def test_length_mismatch(tmp_path, xy):
    x, y = xy
    np.savez(tmp_path / "d.npz", x=x, y=y[:-1])
    with pytest.raises(DataError, match="x has 60 samples but y has 59"):
        tl.data.load(tmp_path / "d.npz")


def test_csv_bad_cell_names_line_and_column(tmp_path):
    (tmp_path / "d.csv").write_text("1,2,0\n3,oops,1\n")
    with pytest.raises(DataError, match="line 2, column 2: 'oops' is not a number"):
        tl.data.load(tmp_path / "d.csv")


def test_csv_ragged_rows(tmp_path):
    (tmp_path / "d.csv").write_text("1,2,0\n3,1\n")
    with pytest.raises(DataError, match="line 2: 2 columns"):
        tl.data.load(tmp_path / "d.csv")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(DataError, match="unknown data set"):
        tl.data.load(tmp_path / "d.txt")


def test_corrupt_npz(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        tl.data.load(tmp_path / "d.npz")


# --- hostile files: one table, each a writer, the load arguments, the error and its message --------------

def _xy(n=30, classes=3):
    return np.random.default_rng(1).normal(size=(n, 2)), np.arange(n) % classes


def _npz(**arrays):
    def write(path):
        np.savez(path, **arrays)
    return write


def _bytes(data):
    def write(path):
        path.write_bytes(data)
    return write


def _npy_renamed(path):
    with open(path, "wb") as f:
        np.save(f, np.zeros((3, 2)))


def _pickle(path):
    import pickle
    path.write_bytes(pickle.dumps({"x": [1.0], "y": [0]}))


def _truncated(path):
    x, y = _xy()
    np.savez(path, x=x, y=y)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zip_with_garbage_members(path):
    import zipfile
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", b"\x93NUMPY garbage")
        z.writestr("y.npy", b"garbage")


x0, y0 = _xy()
y_typo = y0.copy()
y_typo[17] = 1000

HOSTILE = [
    # (id, file name, writer, load keyword arguments, error type, message fragment)
    ("npy-renamed-npz", "d.npz", _npy_renamed, {}, DataError, r"not a readable \.npz archive \(it is a single \.npy array\)"),
    ("empty-npz", "d.npz", _bytes(b""), {}, DataError, r"not a readable \.npz archive \(it is empty, 0 bytes\)"),
    ("pickle-as-npz", "d.npz", _pickle, {}, DataError, "does not start like a zip file"),
    ("object-arrays", "d.npz", _npz(x=np.array([1, "a", None], dtype=object), y=np.zeros(3)), {}, DataError,
     r"holds pickled \(object\) arrays"),
    ("truncated-npz", "d.npz", _truncated, {}, DataError, r"not a readable \.npz archive"),
    ("garbage-members", "d.npz", _zip_with_garbage_members, {}, DataError, r"not a readable \.npz archive"),
    ("string-x", "d.npz", _npz(x=x0.astype(str), y=y0), {}, DataError, "x has dtype <U.*; expected real numbers"),
    ("string-y", "d.npz", _npz(x=x0, y=y0.astype(str)), {}, DataError, "y has dtype <U.*; expected real numbers"),
    ("complex-x", "d.npz", _npz(x=x0 + 1j, y=y0), {}, DataError, r"x is complex \(complex128\); trainlab takes real"),
    ("complex-y", "d.npz", _npz(x=x0, y=y0 + 0j), {}, DataError, "y is complex"),
    ("timedelta-x", "d.npz", _npz(x=x0.astype("m8[s]"), y=y0), {}, DataError, "x has dtype timedelta64"),
    ("beyond-float32", "d.npz", _npz(x=np.where(np.arange(60).reshape(30, 2) == 9, 1e300, x0), y=y0), {}, DataError,
     r"x has 1e\+300 at sample 4, feature 1; inputs must be finite and within float32's range"),
    ("no-features", "d.npz", _npz(x=np.zeros((30, 0)), y=y0), {}, DataError, r"x has shape \(30, 0\), no features"),
    ("no-samples", "d.npz", _npz(x=np.zeros((0, 2)), y=np.zeros(0)), {}, DataError, "holds no samples"),
    ("y-2d", "d.npz", _npz(x=x0, y=y0[:, None]), {}, DataError, r"y has shape \(30, 1\); expected one label per"),
    ("label-typo", "d.npz", _npz(x=x0, y=y_typo), {}, DataError,
     r"labels must be 0…C−1 with every class present; label 1000 at sample 17 leaves classes 3…999 empty"
     r" \(present: 0…2, 1000\); if intended, set data.num_classes = 1001"),
    ("labels-from-one", "d.npz", _npz(x=x0, y=y0 + 1), {}, DataError,
     r"label 3 at sample 2 leaves class 0 empty \(present: 1…3\)"),
    ("one-class", "d.npz", _npz(x=x0, y=np.zeros(30)), {}, DataError,
     "every label is 0, a single class; classification needs samples of at least two classes"),
    ("one-class-even-with-num-classes", "d.npz", _npz(x=x0, y=np.ones(30)), {"num_classes": 4}, DataError,
     "every label is 1, a single class"),
    ("label-above-num-classes", "d.npz", _npz(x=x0, y=y_typo), {"num_classes": 5}, DataError,
     r"label 1000 at sample 17 is not below data.num_classes = 5; labels must be integers in \[0, 5\)"),
    ("huge-float-label", "d.npz", _npz(x=x0, y=np.where(np.arange(30) == 3, 1e30, y0)), {}, DataError,
     r"label 1e\+30 at sample 3 is not allowed"),
    ("class-only-in-test", "d.npz", _npz(x=x0[:5], y=np.array([0, 0, 0, 0, 1])), {"test_fraction": 0.6}, DataError,
     "test_fraction=0.6 puts all 1 sample.* of class 1 in the test split"),
    ("num-classes-one", "d.npz", _npz(x=x0, y=y0), {"num_classes": 1}, ConfigError,
     r"num_classes=1 is not allowed; expected None or 0 \(infer from the labels\) or an integer >= 2"),
    ("num-classes-bool", "d.npz", _npz(x=x0, y=y0), {"num_classes": True}, ConfigError, "num_classes=True"),
    ("num-classes-huge", "d.npz", _npz(x=x0, y=y0), {"num_classes": 10**7}, ConfigError, "num_classes=10000000"),
    ("seed-2**64", "d.npz", _npz(x=x0, y=y0), {"seed": 2**64}, ConfigError,
     r"seed=18446744073709551616 is not allowed; expected an integer >= 0 and <= 9223372036854775807"),
    ("seed-negative", "d.npz", _npz(x=x0, y=y0), {"seed": -1}, ConfigError, "seed=-1 is not allowed"),
    ("seed-float", "d.npz", _npz(x=x0, y=y0), {"seed": 1.5}, ConfigError, "seed=1.5 is not allowed"),
    ("fraction-nan", "d.npz", _npz(x=x0, y=y0), {"test_fraction": float("nan")}, ConfigError, "test_fraction"),
    ("empty-csv", "d.csv", _bytes(b""), {}, DataError, "holds no data rows"),
    ("header-only-csv", "d.csv", _bytes(b"a,b,label\n"), {}, DataError, "holds no data rows"),
    ("blank-csv", "d.csv", _bytes(b"\n \n,,\n"), {}, DataError, "holds no data rows"),
    ("one-column-csv", "d.csv", _bytes(b"0\n1\n"), {}, DataError, "has 1 column; expected at least one feature"),
    ("semicolon-csv", "d.csv", _bytes(b"a;b;label\n1;2;0\n3;4;1\n"), {}, DataError,
     r"has 1 column \(its values look separated by ';'; trainlab reads commas\)"),
    ("tab-csv", "d.csv", _bytes(b"1\t2\t0\n3\t4\t1\n"), {}, DataError, r"separated by '\\t'"),
    ("ragged-csv", "d.csv", _bytes(b"1,2,0\n3,4,1\n5,1\n"), {}, DataError, "line 3: 2 columns where the first data"),
    ("ragged-long-csv", "d.csv", _bytes(b"1,2,0\n3,4,1,7\n"), {}, DataError, "line 2: 4 columns"),
    ("latin1-csv", "d.csv", _bytes("1,2,0\n3,\u00e9,1\n".encode("latin-1")), {}, DataError,
     r"is not UTF-8 text \(byte 0xe9 on line 2, offset 8\); save it as UTF-8"),
    ("utf16-csv", "d.csv", _bytes("1,2,0\n".encode("utf-16")), {}, DataError, "is not UTF-8 text"),
    ("nul-csv", "d.csv", _bytes(b"1,2,0\n3,\x00,1\n"), {}, DataError, r"line 2, column 2: '\\x00' is not a number"),
    ("typo-in-first-line-is-no-header", "d.csv", _bytes(b"1,2,oops\n3,4,1\n"), {}, DataError,
     "line 1, column 3: 'oops' is not a number"),
    ("complex-csv", "d.csv", _bytes(b"1,2+3j,0\n3,4,1\n"), {}, DataError, r"line 1, column 2: '2\+3j' is not a number"),
    ("long-cell-csv", "d.csv", _bytes(b"1,2,0\n3," + b"z" * 500 + b",1\n"), {}, DataError, r"'z{40}'… is not a number"),
    ("nan-label-csv", "d.csv", _bytes(b"1,2,0\n3,4,nan\n"), {}, DataError, "label nan at sample 1 is not allowed"),
    ("inf-feature-csv", "d.csv", _bytes(b"1,inf,0\n3,4,1\n"), {}, DataError, "x has inf at sample 0, feature 1"),
    ("directory", "d.csv", lambda p: p.mkdir(), {}, DataError, "is a directory; expected a .npz or .csv file"),
]


@pytest.mark.parametrize("name, write, kwargs, error, match", [case[1:] for case in HOSTILE],
                         ids=[case[0] for case in HOSTILE])
def test_hostile_file_gives_one_sentence_and_leaves_the_file_alone(tmp_path, name, write, kwargs, error, match):
    path = tmp_path / name
    write(path)
    before = tree_digest(path)
    with pytest.raises(error, match=match) as info:
        tl.data.load(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert tree_digest(path) == before


def test_bom_csv_gives_the_same_arrays_as_without(tmp_path, xy):
    x, y = xy
    text = "\n".join(",".join(map(repr, [*map(float, r), int(c)])) for r, c in zip(x, y)) + "\n"
    (tmp_path / "plain.csv").write_text(text, encoding="utf-8")
    (tmp_path / "bom.csv").write_text(text, encoding="utf-8-sig")
    assert (tmp_path / "bom.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    plain = tl.data.load(tmp_path / "plain.csv", standardize=False)
    bom = tl.data.load(tmp_path / "bom.csv", standardize=False)
    for a, b in zip(plain, bom):
        assert all(torch.equal(s, t) for s, t in zip(a.tensors, b.tensors))
    assert len(bom[0]) + len(bom[1]) == 60  # the first row is data, not a header


def test_bom_csv_with_header(tmp_path):
    (tmp_path / "d.csv").write_text("a,label\n1,0\n2,1\n3,0\n4,1\n", encoding="utf-8-sig")
    train, test = tl.data.load(tmp_path / "d.csv", test_fraction=0, standardize=False)
    assert train.tensors[0][:, 0].tolist() == [1, 2, 3, 4] and train.tensors[1].tolist() == [0, 1, 0, 1]


def test_num_classes_with_an_empty_class_warns_and_builds_that_many(tmp_path, xy):
    x, y = xy
    y = np.where(y == 2, 4, y)  # classes 0, 1, 4; 2 and 3 empty
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"label 4 at sample 40 leaves classes 2…3 empty"):
        tl.data.load(tmp_path / "d.npz")
    with pytest.warns(UserWarning, match=r"classes 2…3, 5 of data.num_classes = 6 have no samples") as record:
        train, test = tl.data.load(tmp_path / "d.npz", num_classes=6)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert train.num_classes == test.num_classes == 6
    assert tl.data.num_classes(train, test) == 6  # not max(label) + 1 = 5
    assert tl.data.num_classes(torch.utils.data.TensorDataset(torch.zeros(2, 1), torch.tensor([0, 3]))) == 4


def test_num_classes_zero_means_infer(tmp_path, xy):
    x, y = xy
    np.savez(tmp_path / "d.npz", x=x, y=y)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, test = tl.data.load(tmp_path / "d.npz", num_classes=0)
        same = tl.data.load(tmp_path / "d.npz", num_classes=3)  # every class present: no warning
    assert train.num_classes == same[0].num_classes == 3


def test_num_classes_of_nothing_is_refused():
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 1), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(DataError, match="at least one non-empty data set"):
        tl.data.num_classes(empty)


def test_bool_labels_are_two_classes(tmp_path, xy):
    x, y = xy
    np.savez(tmp_path / "d.npz", x=x, y=(y == 1))
    train, test = tl.data.load(tmp_path / "d.npz")
    assert tl.data.num_classes(train, test) == 2


@settings(max_examples=80, deadline=None)
@given(labels=st.lists(st.integers(0, 12), min_size=1, max_size=40), declared=st.one_of(st.none(), st.integers(2, 15)))
def test_classes_against_the_definition(labels, declared):
    """Accepted exactly when the labels are 0…C−1 with every class present (C inferred), or all
    below the declared C; fewer than two distinct labels never."""
    import warnings

    from trainlab.data import files

    y = np.array(labels, dtype=np.int64)
    present = set(labels)
    if declared is None:
        ok = len(present) >= 2 and present == set(range(max(labels) + 1))
    else:
        ok = len(present) >= 2 and max(labels) < declared
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if not ok:
            with pytest.raises(DataError):
                files.classes(y, "y", declared)
            return
        count = files.classes(y, "y", declared)
    assert count == (declared or max(labels) + 1)
    assert len(record) == (declared is not None and len(present) < declared)


def test_ranges_reads_as_runs():
    from trainlab.data.files import _classes, _missing, _ranges

    assert _ranges(np.array([0, 1, 2, 5, 7, 8])) == "0…2, 5, 7…8"
    assert _ranges(np.arange(0, 40, 2)) == "0, 2, 4, 6, 8, 10, … (20 in all)"
    assert _classes(_missing(np.array([1, 4, 9]), 12)) == "classes 0, 2…3, 5…8, 10…11"
    assert _classes(_missing(np.array([0, 2]), 3)) == "class 1"


def test_a_huge_label_is_named_without_listing_its_gaps(tmp_path, xy):
    x, y = xy
    y = y.astype(np.float64)
    y[5] = 1e15
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"label 1000000000000000 at sample 5 leaves classes 3…999999999999999 empty"):
        tl.data.load(tmp_path / "d.npz")


def test_a_bad_byte_far_into_a_file_is_located_exactly(tmp_path):
    lines = [f"{i},{i % 2}" for i in range(5000)]
    data = b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n7,\xff\n"
    (tmp_path / "d.csv").write_bytes(data)
    offset = data.index(b"\xff")
    with pytest.raises(DataError, match=rf"byte 0xff on line 5001, offset {offset}\)"):
        tl.data.load(tmp_path / "d.csv")
