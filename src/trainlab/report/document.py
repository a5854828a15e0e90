"""The demo's report: ``index.html`` (self-contained: figures embedded as data URIs,
readable on a phone), ``summary.md``, ``results.json``, one PNG per figure, and a plain-text
table of claims for the terminal."""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from trainlab import __version__
from trainlab.experiments.result import Result
from trainlab.train.checkpoint import jsonable

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;margin:auto;padding:1em;
line-height:1.45;color:#222}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;width:100%;font-size:.88em;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.held{color:#0a7d2c;font-weight:600}.not{color:#c0392b;font-weight:600}
img{max-width:100%;height:auto;border:1px solid #eee}figure{margin:1em 0}figcaption{font-size:.9em;color:#555}
.note{background:#f8f8f2;border-left:4px solid #ccc;padding:.5em 1em;font-size:.92em}
"""


def write(results: dict[str, Result], out: str | Path, seed: int, seconds: float) -> dict[str, Path]:
    """Write the report files into ``out`` and return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = {}
    for r in results.values():
        for name, (_, fig) in r.figures.items():
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=110)
            pngs[r.figure_file(name)] = buffer.getvalue()
            (out / r.figure_file(name)).write_bytes(buffer.getvalue())
    document = {"experiments": {name: r.to_json() for name, r in results.items()}, "seed": seed, "seconds": seconds,
                "environment": environment()}
    paths = {"json": out / "results.json", "markdown": out / "summary.md", "html": out / "index.html"}
    paths["json"].write_text(json.dumps(jsonable(document), indent=2, allow_nan=False, default=_json_default) + "\n")
    paths["markdown"].write_text(markdown(results, seed, seconds))
    paths["html"].write_text(to_html(results, seed, seconds, pngs))
    return paths


def environment() -> dict[str, Any]:
    """Where the report was made, as stored in ``results.json`` and shown in its header line.

    Parameters: none. Returns: ``{"trainlab": version, "torch": version, "python": version,
    "machine": platform.machine(), "threads": torch.get_num_threads(), "date": "YYYY-MM-DD HH:MM:SS"}``
    (the date in local time).
    """
    return {"trainlab": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def claims_table(results: dict[str, Result]) -> str:
    """The claims as a plain-text table for the terminal."""
    rows = [(name, "held" if c.held else "NOT HELD", c.text, c.evidence) for name, r in results.items() for c in r.claims]
    width = max(len(r[0]) for r in rows) if rows else 10
    lines = [f"{'experiment':<{width}}  {'result':<8}  claim — measured"]
    for name, held, text, evidence in rows:
        lines.append(f"{name:<{width}}  {held:<8}  {text}\n{'':<{width}}  {'':<8}    ↳ {evidence}")
    held = sum(c.held for r in results.values() for c in r.claims)
    lines.append(f"{held} of {len(rows)} claims held.")
    return "\n".join(lines)


def markdown(results: dict[str, Result], seed: int, seconds: float) -> str:
    """The report as Markdown (``summary.md``): the count of claims held, then per experiment its claims
    table (held, claim, this run, the lecture), its tables, its figures (linked PNG files) and notes.

    Parameters: ``results`` experiment name → :class:`~trainlab.experiments.result.Result`, in
    report order; ``seed`` and ``seconds`` the run's seed and duration, shown in the header with
    :func:`environment`. Returns: the Markdown text.
    """
    held = sum(c.held for r in results.values() for c in r.claims)
    total = sum(len(r.claims) for r in results.values())
    lines = ["# trainlab demo — what to do when a network won't train", "",
             f"{held} of {total} claims held · seed {seed} · {seconds:.0f} s · {_environment_line()}", ""]
    for name, r in results.items():
        lines += [f"## {r.title}", "", f"`{name}` — {r.seconds:.1f} s", "",
                  "| held | claim | this run | the lecture |", "|---|---|---|---|"]
        lines += [f"| {'✅' if c.held else '❌'} | {_md(c.text)} | {_md(c.evidence)} | {_md(c.lecture)} |" for c in r.claims]
        lines.append("")
        for key, table in r.tables.items():
            lines += [f"**{key}**", "", "| " + " | ".join(table.columns) + " |",
                      "|" + "---|" * len(table.columns)]
            lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
            lines.append("")
        for key, (title, _) in r.figures.items():
            lines += [f"![{title}]({r.figure_file(key)})", ""]
        lines += [f"> {note}" for note in r.notes] + ([""] if r.notes else [])
    return "\n".join(lines)


def to_html(results: dict[str, Result], seed: int, seconds: float, pngs: dict[str, bytes]) -> str:
    """The report as one self-contained HTML page (``index.html``): header, table of contents, then per
    experiment its claims, figures (embedded as PNG data URIs), tables and notes; all text escaped.

    Parameters: ``results``, ``seed``, ``seconds`` as for :func:`markdown`; ``pngs`` each figure's
    PNG bytes, keyed by ``Result.figure_file(name)`` (every figure must have one). Returns: the HTML text.
    """
    held = sum(c.held for r in results.values() for c in r.claims)
    total = sum(len(r.claims) for r in results.values())
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width,initial-scale=1'>",
             f"<title>trainlab demo report</title><style>{CSS}</style></head><body>",
             "<h1>trainlab demo — what to do when a network won't train</h1>",
             f"<p><b>{held} of {total}</b> claims of the lecture held in this run. Seed {seed}, {seconds:.0f} s,"
             f" {html.escape(_environment_line())}. Every number and figure below comes from this run.</p>",
             "<ul>" + "".join(f"<li><a href='#{n}'>{html.escape(r.title)}</a> — "
                              f"{sum(c.held for c in r.claims)}/{len(r.claims)} held</li>" for n, r in results.items())
             + "</ul>"]
    for name, r in results.items():
        parts.append(f"<h2 id='{name}'>{html.escape(r.title)}</h2><p><code>{name}</code> · {r.seconds:.1f} s</p>")
        parts.append("<table><tr><th></th><th>claim</th><th>this run</th><th>the lecture</th></tr>")
        for c in r.claims:
            mark = "<span class='held'>held</span>" if c.held else "<span class='not'>not held</span>"
            parts.append(f"<tr><td>{mark}</td><td>{html.escape(c.text)}</td><td>{html.escape(c.evidence)}</td>"
                         f"<td>{html.escape(c.lecture)}</td></tr>")
        parts.append("</table>")
        for key, (title, _) in r.figures.items():
            data = base64.b64encode(pngs[r.figure_file(key)]).decode()
            parts.append(f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(title)}</figcaption></figure>")
        for key, table in r.tables.items():
            parts.append(f"<p><b>{html.escape(key)}</b></p><table><tr>"
                         + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in table.rows]
            parts.append("</table>")
        parts += [f"<p class='note'>{html.escape(note)}</p>" for note in r.notes]
    parts.append("</body></html>")
    return "\n".join(parts)


def _environment_line() -> str:
    e = environment()
    return f"trainlab {e['trainlab']}, torch {e['torch']}, Python {e['python']}, {e['threads']} threads, {e['date']}"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
