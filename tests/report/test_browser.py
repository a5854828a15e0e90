"""The demo report in a real browser (headless Chromium, Debian package ``chromium``; skipped
without it): at 390 CSS pixels, a phone, nothing makes the page scroll sideways, claims are
cards, multi-panel figures show their stacked version, wide tables scroll inside themselves and
formulas take space as MathML; at 1280 pixels the claims are a table and figures keep their own size.

The report is loaded in an ``<iframe>`` of the given width (headless Chromium keeps its window
at least 500 pixels wide) and measured by a script whose findings ``--dump-dom`` prints.
"""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from trainlab.report import document

from .test_rendering import make_result

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian package chromium)")

PROBE = """<!doctype html><html><head><meta charset='utf-8'></head><body style='margin:0'>
<iframe id='page' style='border:0;width:WIDTHpx;height:900px' srcdoc="PAGE"></iframe>
<script>
window.addEventListener('load', () => {
  const d = document.getElementById('page').contentDocument, w = d.defaultView;
  const shown = e => e.getClientRects().length > 0 && e.getBoundingClientRect().width > 0;
  const style = s => w.getComputedStyle(d.querySelector(s));
  const out = {
    viewport: w.innerWidth, scrollWidth: d.documentElement.scrollWidth,
    images: [...d.querySelectorAll('figure img')].filter(shown)
      .map(i => ({cls: i.className, width: i.getBoundingClientRect().width, natural: i.naturalWidth,
                  tall: i.naturalHeight > i.naturalWidth})),
    row: style('table.claims tbody tr').display, head: style('table.claims thead').display,
    claimFont: parseFloat(style('table.claims td').fontSize),
    tables: [...d.querySelectorAll('table:not(.claims)')]
      .map(t => ({width: t.getBoundingClientRect().width, scroll: t.scrollWidth})),
    math: [...d.querySelectorAll('math')].map(m => m.getBoundingClientRect().height),
  };
  document.body.setAttribute('data-probe', JSON.stringify(out));
});
</script></body></html>"""


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser")
    return document.write({"toy": make_result()}, out, seed=0, seconds=1.0)["html"]


def measure(page: Path, width: int) -> dict:
    probe = page.with_name(f"probe-{width}.html")
    probe.write_text(PROBE.replace("WIDTH", str(width)).replace("PAGE", html.escape(page.read_text(), quote=True)))
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                           "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert found, f"no measurement from Chromium (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found[1]))


def test_phone_width(page):
    m = measure(page, 390)
    assert m["viewport"] == 390
    assert m["scrollWidth"] <= 390  # nothing makes the page itself scroll sideways
    assert m["row"] == "block" and m["head"] == "none"  # claims as cards, no header row
    assert m["claimFont"] >= 14
    assert len(m["images"]) == 2  # one image per figure shown: the stacked one for the two-panel figure
    assert [i["cls"] for i in m["images"]] == ["narrow", "wide"] and m["images"][0]["tall"]
    assert all(i["width"] <= 390 for i in m["images"])
    wide = m["tables"][0]
    assert wide["width"] <= 390 < wide["scroll"]  # the 14-column table scrolls inside itself
    assert m["math"] and min(m["math"]) > 5  # MathML laid out


def test_desktop_width(page):
    m = measure(page, 1280)
    assert m["scrollWidth"] <= 1280
    assert m["row"] == "table-row" and m["head"] == "table-header-group"
    assert [i["cls"] for i in m["images"]] == ["wide has-narrow", "wide"]
    single = m["images"][1]
    assert single["width"] == pytest.approx(single["natural"], abs=2)  # its own size (and a 1 px border), not blown up
