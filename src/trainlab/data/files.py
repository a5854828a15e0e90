"""User data from ``.npz`` (arrays ``x`` and ``y``) or ``.csv`` (last column the label),
checked so that bad data fails early with a :class:`~trainlab.errors.DataError` that names
the file, the row and what is allowed.

A fault of the environment rather than of the data (permission denied, an I/O error while
opening the file) is left as the ``OSError`` it is, so the CLI can tell the two apart.
"""

from __future__ import annotations

import codecs
import csv
import io
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import NoReturn

import numpy as np

from trainlab.errors import DataError

#: Every input ends up in a float32 tensor; larger magnitudes would become ±inf there.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: The first bytes of a zip archive (an ``.npz``: a file, or an empty archive) and of a ``.npy`` array.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
#: Everything NumPy and zipfile raise on a damaged or foreign archive.
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, NotImplementedError, MemoryError,
               zipfile.BadZipFile, zlib.error)


def read(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from a ``.npz`` or ``.csv`` file, validated by :func:`check`."""
    path = Path(path)
    readers = {".npz": read_npz, ".csv": read_csv}
    if path.suffix.lower() not in readers:
        raise DataError(f"data file {str(path)!r} has suffix {path.suffix!r}; allowed: .npz or .csv")
    if path.is_dir():
        raise DataError(f"data file {str(path)!r} is a directory; expected a .npz or .csv file")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    x, y = readers[path.suffix.lower()](path)
    return check(x, y, source=str(path))


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of an archive written by ``np.savez(path, x=..., y=...)``;
    pickled (object) arrays are refused, never unpickled."""
    with open(path, "rb") as f:  # an OSError here is the environment's, not the data's
        magic = f.read(6)
    if not magic:
        _not_npz(path, "it is empty, 0 bytes")
    if magic.startswith(_NPY_MAGIC):
        _not_npz(path, "it is a single .npy array")
    if not magic.startswith(_ZIP_MAGIC):
        _not_npz(path, "it does not start like a zip file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            if "x" not in keys or "y" not in keys:
                raise DataError(f"{str(path)!r} holds arrays {keys}; expected arrays named 'x' and 'y'")
            return archive["x"], archive["y"]
    except DataError:
        raise
    except _NPZ_ERRORS as e:
        pickled = "pickle" in str(e) or "Object arrays" in str(e)
        _not_npz(path, "it holds pickled (object) arrays" if pickled else str(e) or type(e).__name__)


def _not_npz(path: Path, reason: str) -> NoReturn:
    raise DataError(f"{str(path)!r} is not a readable .npz archive ({reason});"
                    " save the data with np.savez(path, x=inputs, y=labels)") from None


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Comma-separated numbers, one sample per line, the label last.

    The file must be UTF-8; a byte-order mark is ignored. A first line in which no cell is
    a number is taken as a header; one that mixes numbers and text is a data line with a
    bad cell (taking it for a header would silently drop a sample).
    """
    text = _utf8_text(path)
    try:
        rows = [(i, row) for i, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1)
                if any(c.strip() for c in row)]
    except csv.Error as e:
        raise DataError(f"{str(path)!r} is not a readable .csv file ({e})") from None
    if rows and not any(_is_number(c) for c in rows[0][1]):
        rows = rows[1:]
    if not rows:
        raise DataError(f"{str(path)!r} holds no data rows; expected one sample per line, the label last")
    width = len(rows[0][1])
    if width < 2:
        other = next((d for d in ";\t| " if d in rows[0][1][0].strip()), None)
        hint = f" (its values look separated by {other!r}; trainlab reads commas)" if other else ""
        raise DataError(f"{str(path)!r} has {width} column{hint}; expected at least one feature column and a label column")
    for line, row in rows:
        if len(row) != width:
            raise DataError(f"{str(path)!r}, line {line}: {len(row)} columns where the first data line has {width}")
    try:  # NumPy parses each cell as float() does, in one pass
        values = np.array([row for _, row in rows], dtype=np.float64)
    except ValueError:
        line, c, cell = next((line, c, cell) for line, row in rows for c, cell in enumerate(row) if not _is_number(cell))
        raise DataError(f"{str(path)!r}, line {line}, column {c + 1}: {_short(cell.strip())} is not a number") from None
    return values[:, :-1], values[:, -1]


def _utf8_text(path: Path) -> str:
    """The file as text: UTF-8, a leading byte-order mark dropped; otherwise a DataError
    naming the first bad byte, its line and its offset in the file."""
    data = path.read_bytes()  # an OSError here is the environment's, not the data's
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        line = data.count(b"\n", 0, at) + 1
        raise DataError(f"{str(path)!r} is not UTF-8 text (byte 0x{data[at]:02x} on line {line}, offset {at});"
                        " save it as UTF-8") from None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _short(text: str, limit: int = 40) -> str:
    """``repr`` of ``text``, cut to ``limit`` characters so a message stays one line."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def check(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(x float64 of shape (n, ...), y int64 of shape (n,))``.

    Refused: arrays that are not real numbers (strings, objects, complex — whose imaginary
    part would be lost — dates), ``y`` not one-dimensional, a length mismatch, no samples
    or no features, ``x`` not finite or beyond float32's range (``|x| > 3.4e38``, which
    would become ±inf in the float32 tensors), labels that are not integers ``>= 0``.
    A one-dimensional ``x`` is read as a single feature. Whether the labels make a
    sensible set of classes is :func:`classes`'s question.
    """
    x, y = np.asarray(x), np.asarray(y)
    for name, a in (("x", x), ("y", y)):
        if a.dtype.kind == "c":
            raise DataError(f"{source}: {name} is complex ({a.dtype}); trainlab takes real numbers,"
                            " so give the real and imaginary parts as separate features")
        if a.dtype.kind not in "biuf":
            raise DataError(f"{source}: {name} has dtype {a.dtype}; expected real numbers")
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
    if x[0].size == 0:
        raise DataError(f"{source}: x has shape {x.shape}, no features; expected at least one")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x) | (np.abs(x) > FLOAT32_MAX)
    if bad.any():
        row, *feature = (int(i) for i in np.argwhere(bad)[0])
        where = feature[0] if len(feature) == 1 else tuple(feature)
        raise DataError(f"{source}: x has {x[bad][0]} at sample {row}, feature {where};"
                        f" inputs must be finite and within float32's range (|x| <= {FLOAT32_MAX:.3g})")
    return x, _check_labels(y, source)


def _check_labels(y: np.ndarray, source: str) -> np.ndarray:
    """Labels as int64; a label beyond 2**53 (where float64 stops holding every integer,
    and far beyond any class count) is refused before the cast could overflow."""
    yf = y.astype(np.float64)
    bad = ~np.isfinite(yf) | (yf != np.round(yf)) | (yf < 0) | (yf > 2.0**53)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: label {y[row].item()!r} at sample {row} is not allowed;"
                        f" labels must be integers in [0, n_classes)")
    return yf.astype(np.int64)


def classes(y: np.ndarray, source: str, num_classes: int | None = None) -> int:
    """The number of classes ``C`` of labels ``y`` (int64 ``>= 0``, as :func:`check` leaves them).

    With ``num_classes=None`` the labels must be exactly ``0 … C−1`` with every class
    present, ``C = max(y) + 1``: a gap (one mistyped label 1000 among 0–2) would silently
    build a model with 1,001 outputs. With ``num_classes`` given, labels ``>= num_classes``
    are refused and classes without samples are named in a warning. Fewer than two classes
    present is refused either way: there is nothing to classify.
    """
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"{source}: every label is {int(present[0])}, a single class;"
                        " classification needs samples of at least two classes")
    largest = int(present[-1])
    row = int(np.flatnonzero(y == largest)[0])
    if num_classes is None:
        if largest != len(present) - 1:
            empty = _missing(present, largest)
            raise DataError(f"{source}: labels must be 0…C−1 with every class present; label {largest} at"
                            f" sample {row} leaves {_classes(empty)} empty (present: {_ranges(present)});"
                            f" if intended, set data.num_classes = {largest + 1}")
        return len(present)
    if largest >= num_classes:
        raise DataError(f"{source}: label {largest} at sample {row} is not below data.num_classes ="
                        f" {num_classes}; labels must be integers in [0, {num_classes})")
    empty = _missing(present, num_classes)
    if empty:
        warnings.warn(f"{source}: {_classes(empty)} of data.num_classes = {num_classes} have no samples;"
                      " the model still gets an output for each", UserWarning, stacklevel=3)
    return num_classes


Runs = list[tuple[int, int]]


def _missing(present: np.ndarray, upper: int) -> Runs:
    """The integers in ``[0, upper)`` absent from sorted ``present``, as runs ``(first, last)``;
    never materialised, since one label of 10¹⁵ leaves that many gaps."""
    runs, expected = [], 0
    for v in (int(p) for p in present if p < upper):
        if v > expected:
            runs.append((expected, v - 1))
        expected = v + 1
    if expected < upper:
        runs.append((expected, upper - 1))
    return runs


def _classes(runs: Runs) -> str:
    single = len(runs) == 1 and runs[0][0] == runs[0][1]
    return ("class " if single else "classes ") + _text(runs)


def _ranges(labels: np.ndarray) -> str:
    """Sorted distinct integer labels as runs: ``[0, 1, 2, 5, 7, 8] → "0…2, 5, 7…8"``."""
    runs: Runs = []
    for v in (int(label) for label in labels):
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return _text(runs)


def _text(runs: Runs, limit: int = 6) -> str:
    """Runs as ``"0…2, 5"``; past ``limit`` runs, the rest as a count."""
    text = [str(a) if a == b else f"{a}…{b}" for a, b in runs[:limit]]
    if len(runs) > limit:
        text.append(f"… ({sum(b - a + 1 for a, b in runs)} in all)")
    return ", ".join(text)
