"""What an experiment returns: the lecture's claims checked against this run, with the
tables and figures that show the evidence."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from trainlab.experiments.statistics import Interval


@dataclass
class Config:
    """Settings shared by every experiment: ``quick`` runs a reduced version (for tests and
    a first look, under a minute for all of them); ``seed`` fixes every random draw."""

    quick: bool = False
    seed: int = 0
    progress: bool = True


@dataclass
class Claim:
    text: str  # the lecture's claim, as a statement this run can check
    held: bool
    evidence: str  # what this run measured
    lecture: str = ""  # what the lecture (or its paper) reported, where known
    verdict: str = ""  # "held", "not held" or "inconclusive" (statistics.py); "" → from held
    interval: str = ""  # the 95 % interval over seeds the verdict rests on, where one was measured

    def __post_init__(self) -> None:
        from trainlab.experiments.statistics import VERDICTS

        self.verdict = self.verdict or ("held" if self.held else "not held")
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict={self.verdict!r} is not one of {', '.join(VERDICTS)}")
        self.held = self.verdict == "held"


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Result:
    name: str
    title: str
    claims: list[Claim] = field(default_factory=list)
    tables: dict[str, Table] = field(default_factory=dict)
    figures: dict[str, tuple[str, Figure]] = field(default_factory=dict)  # name -> (title, figure)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    config: Config = field(default_factory=Config)

    def claim(self, text: str, held: bool, evidence: str, lecture: str = "") -> None:
        """Record a claim this run checked, as a :class:`Claim` appended to ``claims``.

        Parameters:
            text: the lecture's claim, as a statement this run can check (no default).
            held: whether this run's numbers bear it out; stored as ``bool(held)`` (no default).
            evidence: what this run measured (no default).
            lecture: what the lecture (or its paper) reported (default ``""``).

        Returns:
            ``None``.
        """
        self.claims.append(Claim(text, bool(held), evidence, lecture))

    def decide(self, text: str, over_seeds: "Interval", evidence: str, lecture: str = "", threshold: float = 0.0
               ) -> Claim:
        """Record a claim decided over seeds: *held* when the 95 % interval ``over_seeds``
        (:func:`trainlab.experiments.statistics.interval` or ``paired``) lies above ``threshold``,
        *not held* below, *inconclusive* when it straddles it. Returns the :class:`Claim`."""
        from trainlab.experiments.statistics import verdict

        decided = verdict(over_seeds, threshold)
        claim = Claim(text, decided == "held", evidence, lecture, decided,
                      f"{over_seeds} vs threshold {threshold:g}")
        self.claims.append(claim)
        return claim

    def table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Store a :class:`Table` under ``tables[name]``, replacing one of that name.

        Parameters:
            name: the table's key (no default).
            columns: the column headings (no default).
            rows: lists of values (no default); tensors and NumPy scalars become Python numbers (a tensor of
                more than one element a list), for JSON.

        Returns:
            ``None``.
        """
        self.tables[name] = Table(columns, [[_plain(v) for v in row] for row in rows])

    def figure(self, name: str, title: str, fig: Figure) -> None:
        """Store a figure under ``figures[name]`` as ``(title, fig)``, replacing one of that name.

        Parameters:
            name: the figure's key, also its file name (see :meth:`figure_file`) (no default).
            title: its caption (no default).
            fig: a :class:`matplotlib.figure.Figure` (no default).

        Returns:
            ``None``.
        """
        self.figures[name] = (title, fig)

    def figure_file(self, name: str) -> str:
        """The file name a figure is written to: ``"<result name>-<figure name>.png"``.

        Parameters:
            name: the figure's key (no default; need not be stored yet).

        Returns:
            The file name, a ``str``.
        """
        return f"{self.name}-{name}.png"

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict; figures by title and file name, not the images.

        Parameters: none.

        Returns:
            A dict with ``name``, ``title``, ``seconds``, ``config`` (``quick`` and ``seed`` only), ``claims``
            (a list of ``{text, held, verdict, interval, evidence, lecture}``), ``tables`` (``{name: {columns, rows}}``), ``figures``
            (a list of ``{name, title, file}``) and ``notes``.
        """
        return {
            "name": self.name, "title": self.title, "seconds": self.seconds,
            "config": {"quick": self.config.quick, "seed": self.config.seed},
            "claims": [{"text": c.text, "held": c.held, "verdict": c.verdict, "interval": c.interval,
                        "evidence": c.evidence, "lecture": c.lecture} for c in self.claims],
            "tables": {k: {"columns": t.columns, "rows": t.rows} for k, t in self.tables.items()},
            "figures": [{"name": k, "title": title, "file": self.figure_file(k)} for k, (title, _) in self.figures.items()],
            "notes": self.notes,
        }


@contextlib.contextmanager
def stages(result: Result, total: int) -> Iterator[tqdm]:
    """A progress bar over an experiment's stages; times the experiment into ``result.seconds``."""
    start = time.perf_counter()
    with tqdm(total=total, desc=result.name, unit="stage", disable=not result.config.progress, leave=False) as bar:
        yield bar
    result.seconds = time.perf_counter() - start


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Timings on one CPU thread are stable; the caller's thread count is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _plain(value: Any) -> Any:
    """Numbers as Python floats/ints (tensors and NumPy scalars included), for JSON."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value
