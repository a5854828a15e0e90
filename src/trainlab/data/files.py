"""User data from ``.npz`` (arrays ``x`` and ``y``) or ``.csv`` (last column the label),
checked so that bad data fails early with a :class:`~trainlab.errors.DataError` that names
the file, the row and what is allowed."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from trainlab.errors import DataError


def read(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from a ``.npz`` or ``.csv`` file, validated by :func:`check`."""
    path = Path(path)
    readers = {".npz": read_npz, ".csv": read_csv}
    if path.suffix.lower() not in readers:
        raise DataError(f"data file {str(path)!r} has suffix {path.suffix!r}; allowed: .npz or .csv")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    x, y = readers[path.suffix.lower()](path)
    return check(x, y, source=str(path))


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            if "x" not in keys or "y" not in keys:
                raise DataError(f"{str(path)!r} holds arrays {keys}; expected arrays named 'x' and 'y'")
            return archive["x"], archive["y"]
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{str(path)!r} is not a readable .npz archive ({e})") from None


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Comma-separated numbers, one sample per line, the label last; a first line that is
    not all numbers is taken as a header."""
    try:
        with open(path, newline="") as f:
            rows = [(i, row) for i, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{str(path)!r} is not a readable .csv file ({e})") from None
    if rows and not all(_is_number(c) for c in rows[0][1]):
        rows = rows[1:]
    if not rows:
        raise DataError(f"{str(path)!r} holds no data rows")
    width = len(rows[0][1])
    if width < 2:
        raise DataError(f"{str(path)!r} has {width} column; expected at least one feature column and a label column")
    values = np.empty((len(rows), width), dtype=np.float64)
    for r, (line, row) in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{str(path)!r}, line {line}: {len(row)} columns where the first data line has {width}")
        for c, cell in enumerate(row):
            if not _is_number(cell):
                raise DataError(f"{str(path)!r}, line {line}, column {c + 1}: {cell.strip()!r} is not a number")
            values[r, c] = float(cell)
    return values[:, :-1], values[:, -1]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def check(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(x float64 of shape (n, ...), y int64 of shape (n,))``.

    Refused: non-numeric arrays, ``y`` not one-dimensional, a length mismatch, NaN/Inf in
    ``x``, labels that are not integers in ``[0, n_classes)`` (``n_classes = max(y) + 1``).
    A one-dimensional ``x`` is read as a single feature.
    """
    x, y = np.asarray(x), np.asarray(y)
    for name, a in (("x", x), ("y", y)):
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise DataError(f"{source}: {name} has dtype {a.dtype}; expected numbers")
    if y.ndim != 1:
        raise DataError(f"{source}: y has shape {y.shape}; expected one label per sample, shape (n,)")
    if x.ndim == 0:
        raise DataError(f"{source}: x is a scalar; expected shape (n_samples, n_features)")
    if x.ndim == 1:
        x = x[:, None]
    if len(x) != len(y):
        raise DataError(f"{source}: x has {len(x)} samples but y has {len(y)}; they must match")
    if len(y) == 0:
        raise DataError(f"{source}: holds no samples")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        row, *feature = (int(i) for i in np.argwhere(bad)[0])
        where = feature[0] if len(feature) == 1 else tuple(feature)
        raise DataError(f"{source}: x has {x[bad][0]} at sample {row}, feature {where}; inputs must be finite")
    return x, _check_labels(y, source)


def _check_labels(y: np.ndarray, source: str) -> np.ndarray:
    yf = y.astype(np.float64)
    bad = ~np.isfinite(yf) | (yf != np.round(yf)) | (yf < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: label {y[row]!r} at sample {row} is not allowed;"
                        f" labels must be integers in [0, n_classes)")
    return yf.astype(np.int64)
