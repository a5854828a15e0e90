import numpy as np
import pytest
import torch

import trainlab as tl
from trainlab.errors import DataError


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
                               np.sort(x[:, 0]), rtol=1e-6)


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
