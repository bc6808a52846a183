"""The report's HTML renders in headless Chromium (installed with apt when running as root, else skipped),
and the page is self-contained and says why undefined metrics are undefined."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isnet.measure.calibration import reliability_figure
from isnet.evaluate.report import OVERALL, Cohort, MethodResult, assemble_report
from isnet.evaluate.report_html import render_html

CLASSES = ["normal", "covid", "tb"]
CHROMIUM = "/usr/bin/chromium"


def _chromium() -> str:
    found = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("headless Chromium not installed (/usr/bin/chromium missing) and cannot install it here "
                    "(needs root and apt-get): install the Debian package 'chromium' to run this test")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if r.returncode != 0:
            pytest.skip(f"'{' '.join(cmd)}' failed (no network or package?): {r.stderr.strip()[-300:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed 'chromium' but no chromium executable was found")
    return found


def screenshot(html: Path, png: Path, size: str = "1280,2000", timeout: float = 120) -> None:
    chromium = _chromium()
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--screenshot={png}", f"--window-size={size}",
           html.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0 and png.is_file(), r.stderr[-1000:]


def _report() -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2] * 8 + [0] * 4)
    sites = ["site_a"] * 24 + ["site_one"] * 4
    probs = rng.dirichlet(np.ones(3), len(y))
    probs[np.arange(len(y)), y] += 0.8
    probs /= probs.sum(1, keepdims=True)
    share = rng.uniform(0.1, 0.6, len(y))
    patients = [f"p{i // 2}" for i in range(len(y))]
    methods = [MethodResult("standard r1", "r1", Cohort(y, sites, patients, probs, share)),
               MethodResult("isnet r2", "r2", Cohort(y, sites, patients, probs[:, [0, 2, 1]] * 0.5 + 1 / 6, share / 2))]
    rep = assemble_report(methods, CLASSES, ["site_a", "site_one", "site_empty"], n_resamples=50)
    rep.update(manifest="external.csv", manifest_sha256="0" * 64, warnings=["site 'site_empty' has no images"])
    fig = reliability_figure({m.name: rep["metrics"][m.name][OVERALL]["calibration"] for m in methods})
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return rep, {"reliability": buf.getvalue()}


def test_html_is_self_contained_and_explains_undefined_metrics(tmp_path):
    rep, figures = _report()
    html = render_html(rep, figures)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "data:image/png;base64," in html and "src=\"http" not in html and "<link" not in html
    assert html.count('<table class="sortable">') >= 7
    assert "only one class (normal) at this site" in html
    assert "no images in this group" in html
    assert "no images at this site" in html


def test_html_escapes_names_from_the_report():
    """Site, method and run names reach the page escaped (autoescaping), never as markup."""
    y = np.array([0, 1, 2] * 4)
    site, name = "<script>alert(1)</script> & co", "isnet <b>r1</b> & r2"
    probs = np.full((len(y), 3), 0.1)
    probs[np.arange(len(y)), y] = 0.8
    cohort = Cohort(y, [site] * len(y), [f"p{i}" for i in range(len(y))], probs, np.full(len(y), 0.3))
    rep = assemble_report([MethodResult(name, "run<&>", cohort)], CLASSES, [site], n_resamples=20)
    rep["report_run_id"] = "id</code><script>x()</script>"
    html = render_html(rep, {})
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    assert "isnet &lt;b&gt;r1&lt;/b&gt; &amp; r2" in html and "run&lt;&amp;&gt;" in html
    assert "id&lt;/code&gt;&lt;script&gt;x()&lt;/script&gt;" in html
    # the page's only script element is its own sorting code; no raw name or bare ampersand from a name
    assert html.count("<script>") == 1 and "<b>" not in html and " & co" not in html


@pytest.mark.slow  # over 25 s on 2 cores; the default suite must stay under 15 minutes
def test_report_renders_in_headless_chromium(tmp_path):
    rep, figures = _report()
    page = tmp_path / "report.html"
    page.write_text(render_html(rep, figures), encoding="utf-8")
    png = tmp_path / "shot.png"
    screenshot(page, png)
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[:2] == (2000, 1280)
    assert png.stat().st_size > 20_000
    # a rendered page: mostly white background with text, tables and the embedded figure in other colours
    white = (img > 245).all(-1).mean()
    assert 0.3 < white < 0.995
    assert len(np.unique(img.reshape(-1, 3)[::7], axis=0)) > 100
    # the header rows of the tables are drawn in their background colour (#f0f3f7)
    assert ((img == [240, 243, 247]).all(-1)).sum() > 1000
