"""The demo report's rendering: verdicts with their intervals and counts, the quick-run notice,
plurals, formulas (TeX-like scripts as Unicode, Markdown <sub>/<sup> and MathML), figures as
links with a stacked version for narrow screens."""

import io
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from trainlab.experiments import Config, Result
from trainlab.experiments.result import one_thread
from trainlab.experiments.statistics import interval
from trainlab.nn.surface import Surface
from trainlab.report import document, plots


def two_panels() -> Figure:
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    x = np.linspace(-1, 1, 30)
    for i, ax in enumerate(fig.subplots(1, 2)):
        filled = ax.contourf(x, x, np.add.outer(x ** 2, (i + 1) * x ** 2), 10)
        fig.colorbar(filled, ax=ax).set_label("loss")
        ax.plot([0, 0.5], [0, 0.5], label=f"path {i}")
        ax.legend()
        ax.set_title(f"panel {i}")
    return fig


def one_panel() -> Figure:
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [1, 0], label="loss")
    ax.axhline(0.5, color="gray", ls=":", label="threshold")
    ax.legend()
    return fig


def make_result(quick: bool = True) -> Result:
    r = Result("toy", "A toy experiment: m^i = λ m^{i−1} − η g^{i−1}", config=Config(quick=quick, progress=False))
    r.claim("An analytic check: d^−0.5·min(t^−0.5, t·w^−1.5) peaks at t = w.", True, "peak at 4000 <of 8000> & more",
            lecture="Vaswani et al.")
    r.decide("A planted difference of +0.1 is held.", interval([0.10, 0.12, 0.09, 0.11, 0.10]), "d = +0.1 (seed 0)")
    r.decide("No difference: inconclusive, B_simple against B_crit.", interval([0.02, -0.03, 0.01, -0.01, 0.0]),
             "d ≈ 0 (seed 0)")
    r.decide("A planted negative is not held.", interval([-0.10, -0.12, -0.09, -0.11, -0.10]), "d = −0.1 (seed 0)")
    r.table("wide_table", [f"column_{i} η_t" for i in range(14)],
            [[1234.5678 * i for i in range(14)], ["batch_size"] * 14])
    r.figure("panels", "Two panels, η^t / η", two_panels())
    r.figure("single", "One panel", one_panel())
    r.notes.append("A note with S = S_min(1 + B_crit/B).")
    r.seconds = 1.25
    return r


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = make_result()
    paths = document.write({"toy": result}, out, seed=3, seconds=12.0)
    return result, out, paths


# ---------------------------------------------------------------- formulas

@pytest.mark.parametrize("text, expected", [
    ("m^i = λ m^{i−1} − η g^{i−1}", "mⁱ = λ mⁱ⁻¹ − η gⁱ⁻¹"),
    ("d^−0.5·min(t^−0.5, t·w^−1.5)", "d⁻⁰·⁵·min(t⁻⁰·⁵, t·w⁻¹·⁵)"),
    ("η^t / η and η_t/η", "ηᵗ / η and ηₜ/η"),
    ("10^-3, x_{i+1}^2", "10⁻³, xᵢ₊₁²"),
    ("θ^{t+1} = θ^t − η^t/σ^t · m^t.", "θᵗ⁺¹ = θᵗ − ηᵗ/σᵗ · mᵗ."),
    # identifiers and file names are not formulas: "_" after a word is left alone
    ("batch_size, critical_points, toy-panels.png, x__y, _private", "batch_size, critical_points, toy-panels.png,"
                                                                  " x__y, _private"),
    ("already Unicode: mⁱ = λ mⁱ⁻¹, ηₜ/η", "already Unicode: mⁱ = λ mⁱ⁻¹, ηₜ/η"),
])
def test_scripts_as_unicode(text, expected):
    assert document.unicode_text(text) == expected


def test_scripts_unicode_cannot_spell():
    text = "B_crit and L_{CE} and t_{0.975, df}"
    assert document.unicode_text(text) == text  # no subscript c, no subscript d: kept as written
    assert document.unicode_text(text, fallback="html") == ("B<sub>crit</sub> and L<sub>CE</sub> and"
                                                           " t<sub>0.975, df</sub>")


def test_scripts_as_mathml_are_well_formed_and_escaped():
    out = document.rich("<b> & m^{i−1} < g_t^2 and B_crit")
    assert out.startswith("&lt;b&gt; &amp; <math><msup><mi>m</mi><mrow><mi>i</mi><mo>−</mo><mn>1</mn></mrow>")
    assert "<msubsup><mi>g</mi><mi>t</mi><mn>2</mn></msubsup>" in out
    assert "<msub><mi>B</mi><mi>crit</mi></msub>" in out
    ET.fromstring(f"<p>{out}</p>")  # well-formed: every element closed, text escaped
    assert document.rich("batch_size <script>") == "batch_size &lt;script&gt;"


# ---------------------------------------------------------------- verdicts, counts, plurals

def test_counts_and_plurals():
    result = make_result()
    assert document.counts({"toy": result}) == {"held": 2, "inconclusive": 1, "not held": 1}
    assert document.count_line({"toy": result}) == "4 claims: 2 held, 1 inconclusive, 1 not held"
    assert document.count_line(result.claims[:1]) == "1 claim: 1 held, 0 inconclusive, 0 not held"
    assert [document.plural(n, "thread") for n in (0, 1, 2)] == ["0 threads", "1 thread", "2 threads"]
    with one_thread():
        assert ", 1 thread," in document._environment_line()
    if torch.get_num_threads() > 1:
        assert f", {torch.get_num_threads()} threads," in document._environment_line()


def test_html_shows_verdicts_intervals_counts_and_quick(report):
    result, out, paths = report
    page = paths["html"].read_text()
    assert "<span class='verdict held'>✓ held</span>" in page
    assert "<span class='verdict open'>? inconclusive</span>" in page
    assert "<span class='verdict not'>✗ not held</span>" in page
    assert "<b>4 claims</b>" in page and "2 held</span>" in page and "1 inconclusive</span>" in page
    for c in result.claims[1:]:
        assert c.interval and document.rich(c.interval) in page  # the interval each verdict rests on
    assert "<p class='quick'><b>Quick run (--quick)</b>" in page and "this quick run" in page
    assert "(quick run)</title>" in page
    assert "1 threads" not in page
    assert "&lt;of 8000&gt; &amp; more" in page  # text escaped
    assert "<math><msup><mi>d</mi>" in page  # formulas as MathML


def test_markdown_and_json_and_terminal(report):
    result, out, paths = report
    md = paths["markdown"].read_text()
    assert md.startswith("# trainlab demo — what to do when a network won't train (quick run)\n")
    assert "4 claims: 2 held, 1 inconclusive, 1 not held · seed 3" in md
    assert "| ❔ inconclusive | No difference: inconclusive, Bₛᵢₘₚₗₑ against B<sub>crit</sub>. |" in md
    assert "| ✅ held | An analytic check: d⁻⁰·⁵·min(t⁻⁰·⁵, t·w⁻¹·⁵) peaks at t = w. |" in md
    assert "(95 % t interval, 5 seeds) vs threshold 0" in md
    doc = json.loads(paths["json"].read_text())
    assert doc["quick"] is True and doc["counts"] == {"held": 2, "inconclusive": 1, "not held": 1}
    assert [c["verdict"] for c in doc["experiments"]["toy"]["claims"]] == ["held", "held", "inconclusive", "not held"]
    table = document.claims_table({"toy": result})
    assert "✗ NOT HELD" in table and "? inconclusive" in table and "↳ over seeds: +0.104 [" in table
    assert table.splitlines()[-1].startswith("4 claims: 2 held, 1 inconclusive, 1 not held. Quick run (--quick)")


def test_full_run_says_nothing_of_quick(tmp_path):
    paths = document.write({"toy": make_result(quick=False)}, tmp_path, seed=0, seconds=1.0)
    assert "Quick run" not in paths["html"].read_text() and "quick run" not in paths["html"].read_text()
    assert "quick" not in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["quick"] is False
    assert "Quick run" not in document.claims_table({"toy": make_result(quick=False)})


# ---------------------------------------------------------------- figures

def test_figures_link_to_their_png_and_stack_on_narrow_screens(report):
    result, out, paths = report
    page = paths["html"].read_text()
    for key in ("panels", "single"):
        file = result.figure_file(key)
        assert (out / file).read_bytes()[:4] == b"\x89PNG"
        assert f"<figure><a href='{file}' title='full-size PNG'><img class='wide" in page
        assert f"<a href='{file}'>full size</a></figcaption>" in page
    assert page.count("<img class='wide has-narrow'") == 1 and page.count("<img class='narrow'") == 1
    assert page.count("data:image/png;base64,") == 3  # two figures, one of them also stacked
    assert "@media (max-width:700px)" in page and "max-width:100%" in page


def test_stacked_puts_panels_one_above_the_other():
    fig = two_panels()
    before = [ax.get_position().bounds for ax in fig.axes]
    tall = plots.stacked(fig)
    assert tuple(tall.get_size_inches()) == pytest.approx((5.0, 8.4))
    assert tuple(fig.get_size_inches()) == pytest.approx((10.0, 4.2))  # the original is untouched
    assert [ax.get_position().bounds for ax in fig.axes] == before
    panels = [ax for ax in tall.axes if ax.get_subplotspec() is not None]
    assert [ax.get_title() for ax in panels] == ["panel 0", "panel 1"]
    top, bottom = (ax.get_position() for ax in panels)
    assert top.y0 > bottom.y1 and abs(top.x0 - bottom.x0) < 1e-6  # one column, in reading order
    tall.savefig(io.BytesIO(), format="png")
    for ax in panels:  # every label inside the figure as saved: nothing clipped at the edges
        box = ax.get_tightbbox(tall._get_renderer()).transformed(tall.transFigure.inverted())
        assert box.x0 >= -1e-3 and box.x1 <= 1 + 1e-3
    colorbars = [ax for ax in tall.axes if ax.get_subplotspec() is None]
    assert len(colorbars) == 2 and {ax.get_ylabel() for ax in colorbars} == {"loss"}
    assert plots.stacked(one_panel()) is None


def test_stacked_restores_hidden_shared_y_labels():
    fig = Figure(figsize=(9, 3), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    for ax in axes:
        ax.plot([0, 1], [0, 1])
        ax.set_ylabel("loss")
    tall = plots.stacked(fig)
    assert [ax.get_ylabel() for ax in tall.axes] == ["loss"] * 3
    assert all(ax.yaxis.get_tick_params()["labelleft"] for ax in tall.axes)


def test_problems_names_what_a_figure_leaves_unexplained():
    assert plots.problems(one_panel()) == [] and plots.problems(two_panels()) == []
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    filled = ax.contourf(np.eye(3), 5)
    fig.colorbar(filled, ax=ax)
    ax.axhline(1.0)
    ax.plot([0, 1], [0, 1], label="path A")
    ax.plot([0, 1], [1, 0], label="path B")
    ax.legend(handles=[ax.lines[2]], fontsize=6)  # path B only
    ax.tick_params(axis="x", labelsize=7)
    assert plots.problems(fig) == ["legend text of 6 pt (< 8)", "panel 1: a reference line without a label",
                                   "panel 1: 'path A' is not in a legend", "panel 1: x tick labels of 7 pt (< 9)",
                                   "panel 2: a colour bar without a label"]
    grid = torch.linspace(-1, 1, 5)
    surface = Surface(grid, grid, grid[:, None] ** 2 + grid[None, :] ** 2, 0.0, ([], []))
    assert plots.problems(plots.surface_figure(surface)) == []
    spectrum = plots.spectrum_figure([-1.0, 0.5, 2.0], "eigenvalues", [0.0, 1.0], [0.5, 0.1])
    assert plots.problems(spectrum) == [] and plots.problems(plots.learning_rate_figure([0.1, 0.2], "lr")) == []
