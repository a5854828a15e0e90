"""The demo's report: ``index.html`` (self-contained: figures embedded as data URIs, readable on
a phone), ``summary.md``, ``results.json``, one PNG per figure, and a plain-text table of claims
for the terminal.

Each claim reads *held*, *not held* or *inconclusive* (:mod:`trainlab.experiments.statistics`),
shown with the 95 % interval over seeds it was decided on. Formulas written with TeX-like scripts
in a text (``m^i``, ``g^{i−1}``, ``d^−0.5``, ``η_t``, ``B_{crit}``) are rendered: as MathML in the
HTML; as Unicode super- and subscripts in the terminal and Markdown where Unicode has every glyph
(``mⁱ``, ``gⁱ⁻¹``, ``d⁻⁰·⁵``, ``ηₜ``), else as ``<sub>``/``<sup>`` in Markdown and as written in
the terminal. A ``_`` is a subscript only after a single letter (``B_crit``, not ``batch_size``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from trainlab import __version__
from trainlab.experiments.result import Claim, Result
from trainlab.experiments.statistics import HELD, INCONCLUSIVE, NOT_HELD, VERDICTS
from trainlab.report.plots import stacked
from trainlab.train.checkpoint import jsonable

TITLE = "trainlab demo — what to do when a network won't train"
DPI = 110
#: The viewport width below which claims become cards and multi-panel figures their stacked version.
NARROW_PX = 700
QUICK_NOTE = ("Quick run (--quick): shorter training on fewer samples than the full demo, for a first look"
              " — its numbers and verdicts are not the full run's.")
#: Verdict → (CSS class, mark for HTML and the terminal, mark for Markdown).
MARKS = {HELD: ("held", "✓", "✅"), NOT_HELD: ("not", "✗", "❌"), INCONCLUSIVE: ("open", "?", "❔")}

CSS = f"""
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;margin:auto;
padding:0 1em 2em;line-height:1.5;color:#222;font-size:16px;-webkit-text-size-adjust:100%;text-size-adjust:100%}}
h1{{font-size:1.6em;line-height:1.25}}h2{{font-size:1.3em;border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:2em}}
table{{border-collapse:collapse;font-size:.9em;display:block;overflow-x:auto;max-width:100%;margin:.6em 0}}
table.claims{{display:table;width:100%}}
th,td{{border:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}}
td.num{{white-space:nowrap;text-align:right;font-variant-numeric:tabular-nums}}
table.claims td{{overflow-wrap:break-word}}table.claims td:empty::after{{content:'—';color:#999}}
th{{background:#f4f4f4}}
.verdict{{display:inline-block;padding:0 .4em;border-radius:3px;font-weight:600;white-space:nowrap}}
.held{{color:#0a6b27;background:#e3f4e8}}.not{{color:#a8261b;background:#fbe5e2}}
.open{{color:#6b4800;background:#fff0c2}}.zero{{color:#555;background:#eee;font-weight:400}}
.quick{{background:#fff4d6;border:1px solid #e0b040;border-radius:4px;padding:.5em .8em}}
.interval{{white-space:normal;font-variant-numeric:tabular-nums}}
figure{{margin:1.2em 0}}figure img{{display:block;max-width:100%;height:auto;border:1px solid #eee}}
figcaption{{font-size:.92em;color:#444;margin-top:.3em}}
.narrow{{display:none}}
.note{{background:#f8f8f2;border-left:4px solid #ccc;padding:.5em 1em;font-size:.95em}}
math{{font-size:1.05em}}
@media (max-width:{NARROW_PX}px){{
body{{padding:0 .7em 2em}}h1{{font-size:1.35em}}
figure img.wide.has-narrow{{display:none}}figure img.narrow{{display:block}}
table.claims,table.claims tbody,table.claims tr,table.claims td{{display:block;width:auto}}
table.claims thead{{display:none}}
table.claims tr{{border:1px solid #ccc;border-radius:4px;margin:.8em 0}}
table.claims td{{border:none;border-top:1px solid #eee}}table.claims td:first-child{{border-top:none}}
table.claims td:empty{{display:none}}
table.claims td[data-label]::before{{content:attr(data-label);display:block;font-size:.8em;color:#666}}
}}
"""


def write(results: dict[str, Result], out: str | Path, seed: int, seconds: float,
          quick: bool | None = None) -> dict[str, Path]:
    """Write the report files into ``out`` and return their paths.

    Parameters: ``results`` experiment name → :class:`~trainlab.experiments.result.Result`, in
    report order; ``seed`` and ``seconds`` the run's seed and duration; ``quick`` whether this was a
    ``--quick`` run (default ``None``: whether any result's ``config.quick`` is set), stated in
    every file. Returns: ``{"json", "markdown", "html"}`` → path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    quick = is_quick(results) if quick is None else bool(quick)
    pngs: dict[str, bytes] = {}
    narrow: dict[str, bytes] = {}
    for r in results.values():
        for name, (_, fig) in r.figures.items():
            pngs[r.figure_file(name)] = _png(fig)
            (out / r.figure_file(name)).write_bytes(pngs[r.figure_file(name)])
            tall = stacked(fig)
            if tall is not None:
                narrow[r.figure_file(name)] = _png(tall)
    document = {"experiments": {name: r.to_json() for name, r in results.items()}, "seed": seed, "seconds": seconds,
                "quick": quick, "counts": counts(results), "environment": environment()}
    paths = {"json": out / "results.json", "markdown": out / "summary.md", "html": out / "index.html"}
    paths["json"].write_text(json.dumps(jsonable(document), indent=2, allow_nan=False, default=_json_default) + "\n")
    paths["markdown"].write_text(markdown(results, seed, seconds, quick))
    paths["html"].write_text(to_html(results, seed, seconds, pngs, quick, narrow))
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


def is_quick(results: dict[str, Result]) -> bool:
    """Whether any of ``results`` comes from a ``--quick`` run."""
    return any(r.config.quick for r in results.values())


def counts(results: dict[str, Result] | Iterable[Claim]) -> dict[str, int]:
    """How many claims read each verdict: ``{"held": N, "inconclusive": M, "not held": K}``."""
    claims = [c for r in results.values() for c in r.claims] if isinstance(results, dict) else list(results)
    return {v: sum(c.verdict == v for c in claims) for v in (HELD, INCONCLUSIVE, NOT_HELD)}


def count_line(results: dict[str, Result] | Iterable[Claim]) -> str:
    """``"12 claims: 9 held, 2 inconclusive, 1 not held"`` (plurals as the numbers need)."""
    n = counts(results)
    return f"{plural(sum(n.values()), 'claim')}: " + ", ".join(f"{k} {v}" for v, k in n.items())


def plural(n: int, word: str) -> str:
    """``"1 thread"``, ``"2 threads"``, ``"0 threads"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def claims_table(results: dict[str, Result], quick: bool | None = None) -> str:
    """The claims as a plain-text table for the terminal: verdict, claim, then what this run
    measured and the interval over seeds; the verdict counts last (and that it was a quick run)."""
    quick = is_quick(results) if quick is None else quick
    rows = [(name, c) for name, r in results.items() for c in r.claims]
    width = max([len(name) for name, _ in rows] + [10])
    verdict_width = max(len(v) for v in VERDICTS) + 2
    lines = [f"{'experiment':<{width}}  {'verdict':<{verdict_width}}  claim — measured"]
    for name, c in rows:
        mark = MARKS[c.verdict][1] + " " + (c.verdict.upper() if c.verdict == NOT_HELD else c.verdict)
        lines.append(f"{name:<{width}}  {mark:<{verdict_width}}  {unicode_text(c.text)}")
        lines.append(f"{'':<{width}}  {'':<{verdict_width}}    ↳ {unicode_text(c.evidence)}")
        if c.interval:
            lines.append(f"{'':<{width}}  {'':<{verdict_width}}    ↳ over seeds: {unicode_text(c.interval)}")
    lines.append(count_line(results) + "." + (" " + QUICK_NOTE if quick else ""))
    return "\n".join(lines)


def markdown(results: dict[str, Result], seed: int, seconds: float, quick: bool | None = None) -> str:
    """The report as Markdown (``summary.md``): the verdict counts, then per experiment its claims
    table (verdict, claim, this run, the 95 % interval over seeds, the lecture), its tables, its
    figures (linked PNG files) and notes.

    Parameters: ``results`` experiment name → :class:`~trainlab.experiments.result.Result`, in
    report order; ``seed`` and ``seconds`` the run's seed and duration, shown in the header with
    :func:`environment`; ``quick`` as for :func:`write`. Returns: the Markdown text.
    """
    quick = is_quick(results) if quick is None else quick
    lines = [f"# {TITLE}" + (" (quick run)" if quick else ""), ""]
    if quick:
        lines += [f"> **{QUICK_NOTE}**", ""]
    lines += [f"{count_line(results)} · seed {seed} · {seconds:.0f} s · {_environment_line()}", ""]
    for name, r in results.items():
        lines += [f"## {_md(r.title)}", "", f"`{name}` — {r.seconds:.1f} s · {count_line(r.claims)}", "",
                  "| verdict | claim | this run | over seeds (95 % interval) | the lecture |", "|---|---|---|---|---|"]
        lines += [f"| {MARKS[c.verdict][2]} {c.verdict} | {_md(c.text)} | {_md(c.evidence)} | {_md(c.interval) or '—'}"
                  f" | {_md(c.lecture)} |" for c in r.claims]
        lines.append("")
        for key, table in r.tables.items():
            lines += [f"**{_md(key)}**", "", "| " + " | ".join(_md(c) for c in table.columns) + " |",
                      "|" + "---|" * len(table.columns)]
            lines += ["| " + " | ".join(_md(_cell(v)) for v in row) + " |" for row in table.rows]
            lines.append("")
        for key, (title, _) in r.figures.items():
            lines += [f"[![{_md(title)}]({r.figure_file(key)})]({r.figure_file(key)})", "", f"*{_md(title)}*", ""]
        lines += [f"> {_md(note)}" for note in r.notes] + ([""] if r.notes else [])
    return "\n".join(lines)


def to_html(results: dict[str, Result], seed: int, seconds: float, pngs: dict[str, bytes],
            quick: bool | None = None, narrow: dict[str, bytes] | None = None) -> str:
    """The report as one self-contained HTML page (``index.html``): header (verdict counts, quick
    run or not), table of contents, then per experiment its claims (cards on a narrow screen),
    figures (embedded PNG data URIs, each a link to its PNG file), tables (scrolling sideways when
    wider than the screen) and notes; all text escaped, formulas as MathML.

    Parameters: ``results``, ``seed``, ``seconds``, ``quick`` as for :func:`markdown`; ``pngs`` each
    figure's PNG bytes, keyed by ``Result.figure_file(name)`` (every figure must have one);
    ``narrow`` the stacked version of multi-panel figures (:func:`trainlab.report.plots.stacked`),
    shown instead below :data:`NARROW_PX` pixels (default none). Returns: the HTML text.
    """
    quick = is_quick(results) if quick is None else quick
    narrow = narrow or {}
    n = counts(results)
    tally = ", ".join(f"<span class='verdict {MARKS[v][0] if k else 'zero'}'>{k} {v}</span>" for v, k in n.items())
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width,initial-scale=1'>",
             f"<title>trainlab demo report{' (quick run)' if quick else ''}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(TITLE)}</h1>"]
    if quick:
        parts.append(f"<p class='quick'><b>{html.escape(QUICK_NOTE.split(':')[0])}</b>:"
                     f"{html.escape(QUICK_NOTE.split(':', 1)[1])}</p>")
    parts += [f"<p><b>{plural(sum(n.values()), 'claim')}</b> of the lecture checked in this"
              f" {'quick ' if quick else ''}run: {tally}. Seed {seed}, {seconds:.0f} s,"
              f" {html.escape(_environment_line())}.</p>",
              "<p>Every number and figure below comes from this run. A claim that depends on random draws is measured"
              " over several seeds and decided on the 95 % interval of the quantity it tests: <i>held</i> when the"
              " interval lies above the threshold, <i>not held</i> when below, <i>inconclusive</i> when it straddles"
              " it. A claim without an interval is a check this one run settles.</p>",
              "<ul>" + "".join(f"<li><a href='#{html.escape(name)}'>{rich(r.title)}</a> — {_tally(r.claims)}</li>"
                               for name, r in results.items()) + "</ul>"]
    labels = ("verdict", "claim", "this run", "over seeds (95 % interval)", "the lecture")
    for name, r in results.items():
        parts.append(f"<h2 id='{html.escape(name)}'>{rich(r.title)}</h2>"
                     f"<p><code>{html.escape(name)}</code> · {r.seconds:.1f} s · {_tally(r.claims)}</p>")
        parts.append("<table class='claims'><thead><tr>" + "".join(f"<th>{h}</th>" for h in labels)
                     + "</tr></thead><tbody>")
        for c in r.claims:
            cells = (_verdict_html(c.verdict), rich(c.text), rich(c.evidence),
                     f"<span class='interval'>{rich(c.interval)}</span>" if c.interval else "", rich(c.lecture))
            parts.append("<tr>" + "".join(f"<td data-label='{label}'>{cell}</td>" if cell and label != "verdict"
                                          else f"<td>{cell}</td>" for label, cell in zip(labels, cells)) + "</tr>")
        parts.append("</tbody></table>")
        for key, (title, _) in r.figures.items():
            file = r.figure_file(key)
            alt = html.escape(unicode_text(title))
            wide = f"data:image/png;base64,{base64.b64encode(pngs[file]).decode()}"
            imgs = f"<img class='wide{' has-narrow' if file in narrow else ''}' alt='{alt}' src='{wide}'>"
            if file in narrow:
                imgs += (f"<img class='narrow' alt='{alt}' loading='lazy'"
                         f" src='data:image/png;base64,{base64.b64encode(narrow[file]).decode()}'>")
            link = html.escape(file)
            parts.append(f"<figure><a href='{link}' title='full-size PNG'>{imgs}</a>"
                         f"<figcaption>{rich(title)} · <a href='{link}'>full size</a></figcaption></figure>")
        for key, table in r.tables.items():
            parts.append(f"<p><b>{rich(key)}</b></p><table><tr>"
                         + "".join(f"<th>{rich(c)}</th>" for c in table.columns) + "</tr>")
            parts += ["<tr>" + "".join(f"<td class='num'>{rich(_cell(v))}</td>" if _is_number(v) else
                                       f"<td>{rich(_cell(v))}</td>" for v in row) + "</tr>" for row in table.rows]
            parts.append("</table>")
        parts += [f"<p class='note'>{rich(note)}</p>" for note in r.notes]
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------- formulas

@dataclass(frozen=True)
class Script:
    """A base with a subscript and/or a superscript; ``written`` as in the text (``B_{crit}``)."""

    base: str
    sub: str | None
    sup: str | None
    written: str


_BARE = r"[−+-]?(?:\d+(?:\.\d+)?|[^\W_]+)"  # d^−0.5, m^i, B_crit (a number, or letters and digits)
_ONE = rf"(?:\{{[^{{}}]*\}}|{_BARE})"
_SCRIPTED = re.compile(rf"(?<![^\W_])(?P<base>[^\W_]+|\))(?P<scripts>(?:[_^]{_ONE}){{1,2}})")
_PART = re.compile(rf"(?P<kind>[_^])(?P<body>{_ONE})")

_SUP = dict(zip("0123456789+−-=()abcdefghijklmnoprstuvwxyzABDEGHIJKLMNOPRTUVWβγδθφχ.",
                "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁻⁼⁽⁾ᵃᵇᶜᵈᵉᶠᵍʰⁱʲᵏˡᵐⁿᵒᵖʳˢᵗᵘᵛʷˣʸᶻᴬᴮᴰᴱᴳᴴᴵᴶᴷᴸᴹᴺᴼᴾᴿᵀᵁⱽᵂᵝᵞᵟᶿᵠᵡ·"))
_SUB = dict(zip("0123456789+−-=()aehijklmnoprstuvxβγρφχ", "₀₁₂₃₄₅₆₇₈₉₊₋₋₌₍₎ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓᵦᵧᵨᵩᵪ"))


def segments(text: str) -> list[str | Script]:
    """``text`` split into plain strings and :class:`Script` s (formulas with scripts)."""
    out: list[str | Script] = []
    last = 0
    for m in _SCRIPTED.finditer(text):
        script = _script(m)
        if script is None:
            continue
        out += [text[last:m.start()]] if m.start() > last else []
        out.append(script)
        last = m.end()
    return out + ([text[last:]] if last < len(text) else [])


def _script(m: re.Match) -> Script | None:
    base, sub, sup = m["base"], None, None
    for part in _PART.finditer(m["scripts"]):
        body = part["body"][1:-1] if part["body"].startswith("{") else part["body"]
        if part["kind"] == "_":
            # a subscript only after one letter: B_crit, η_t, but never batch_size or critical_points
            if sub is not None or len(base) != 1 or not base.isalpha():
                return None
            sub = body
        else:
            if sup is not None:
                return None
            sup = body
    return Script(base, sub, sup, m[0])


def _unicode_script(body: str, table: dict[str, str]) -> str | None:
    chars = [table.get(ch) for ch in body.replace(" ", "")]
    return None if None in chars else "".join(chars)  # type: ignore[arg-type]


def unicode_text(text: str, fallback: str = "plain") -> str:
    """``text`` with its scripts as Unicode (``m^{i−1}`` → ``mⁱ⁻¹``); a script Unicode cannot
    spell is kept as written (``fallback="plain"``) or as ``<sub>``/``<sup>`` (``"html"``, for
    Markdown, with the rest of the text left as it is)."""
    out = []
    for seg in segments(text):
        if isinstance(seg, str):
            out.append(seg)
            continue
        sub = _unicode_script(seg.sub, _SUB) if seg.sub is not None else ""
        sup = _unicode_script(seg.sup, _SUP) if seg.sup is not None else ""
        if sub is not None and sup is not None:
            out.append(seg.base + sub + sup)
        elif fallback == "html":
            out.append(seg.base + (f"<sub>{seg.sub}</sub>" if seg.sub is not None else "")
                       + (f"<sup>{seg.sup}</sup>" if seg.sup is not None else ""))
        else:
            out.append(seg.written)
    return "".join(out)


_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+|\S")


def _mathml_tokens(text: str) -> str:
    """Numbers as ``<mn>``, names as ``<mi>``, anything else as ``<mo>``; one token bare, more in an ``<mrow>``."""
    tokens = []
    for t in _TOKEN.findall(text):
        tag = "mn" if t[0].isdigit() else "mi" if t[0].isalpha() else "mo"
        tokens.append(f"<{tag}>{html.escape(t)}</{tag}>")
    return tokens[0] if len(tokens) == 1 else "<mrow>" + "".join(tokens) + "</mrow>"


def mathml(script: Script) -> str:
    """One :class:`Script` as inline MathML (``<math><msup>…</msup></math>``)."""
    base = _mathml_tokens(script.base)
    if script.sub is not None and script.sup is not None:
        inner = f"<msubsup>{base}{_mathml_tokens(script.sub)}{_mathml_tokens(script.sup)}</msubsup>"
    elif script.sub is not None:
        inner = f"<msub>{base}{_mathml_tokens(script.sub)}</msub>"
    else:
        inner = f"<msup>{base}{_mathml_tokens(script.sup or '')}</msup>"
    return f"<math>{inner}</math>"


def rich(text: str) -> str:
    """``text`` as HTML: escaped, its scripts as MathML."""
    return "".join(html.escape(seg) if isinstance(seg, str) else mathml(seg) for seg in segments(text))


# ---------------------------------------------------------------- helpers

def _verdict_html(verdict: str) -> str:
    css, mark, _ = MARKS[verdict]
    return f"<span class='verdict {css}'>{mark} {verdict}</span>"


def _tally(claims: list[Claim]) -> str:
    n = counts(claims)
    return ", ".join(f"<span class='verdict {MARKS[v][0]}'>{k} {v}</span>" for v, k in n.items() if k) or "no claims"


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _environment_line() -> str:
    e = environment()
    return (f"trainlab {e['trainlab']}, torch {e['torch']}, Python {e['python']}, {plural(e['threads'], 'thread')},"
            f" {e['date']}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _md(text: str) -> str:
    return unicode_text(text, fallback="html").replace("|", "\\|")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
