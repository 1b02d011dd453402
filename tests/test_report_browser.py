"""The report in a real browser (headless Chromium; ``make browser`` installs it): each report kind (one run, several
runs) loads without a script error, its inline SVG figures are laid out with a size, its sections are in the DOM, and
its screenshot is not blank. Skipped where no Chromium is installed."""
import re
import shutil
import subprocess

import numpy as np
import pytest
from test_report import _mlp_run

import specscope as ss
from specscope.cli import main

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (install it: make browser)")

# Appended to a copy of the report: script errors go into the DOM (the report itself has no script), and the laid-out
# size of every figure is written there once the page has loaded.
PROBE = """<script>
window.onerror = function (msg) { document.body.setAttribute('data-errors', (document.body.getAttribute('data-errors') || '') + msg + ';'); };
window.addEventListener('load', function () {
  var sized = 0, svgs = document.querySelectorAll('figure > svg');
  svgs.forEach(function (s) { var r = s.getBoundingClientRect(); if (r.width > 100 && r.height > 50) sized++; });
  var out = document.createElement('pre'); out.id = 'browser-check';
  out.textContent = 'svgs=' + svgs.length + ' sized=' + sized + ' sections=' + document.querySelectorAll('section > h2').length;
  document.body.appendChild(out);
});
</script>"""


def _chromium(*args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=timeout)


def _dom(page, tmp_path, name: str, extra: str = "") -> tuple[str, str]:
    """The DOM of ``page`` with :data:`PROBE` (and ``extra`` markup) appended, as Chromium serializes it after load,
    and the script errors it recorded ('' when none)."""
    probed = tmp_path / f"{name}-probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + extra + "</body>"))
    dom = _chromium("--user-data-dir=" + str(tmp_path / f"profile-{name}"), "--virtual-time-budget=5000", "--dump-dom",
                    probed.as_uri()).stdout
    errors = re.search(r'<body[^>]*data-errors="([^"]*)"', dom)
    return dom, errors.group(1) if errors else ""


def _check(page, tmp_path, name: str, sections: list[str]) -> np.ndarray:
    """Load ``page`` (a report file) in Chromium: its DOM check and screenshot; the screenshot's pixels."""
    dom, errors = _dom(page, tmp_path, name)
    assert "browser-check" in dom, "the page did not finish loading"
    check = dom.split('id="browser-check">', 1)[1].split("<", 1)[0]
    got = dict(kv.split("=") for kv in check.split())
    assert errors == "", errors
    assert int(got["svgs"]) >= 2 and got["sized"] == got["svgs"], check
    for s in sections:
        assert f"<h2>{s}</h2>" in dom, s
    shot = tmp_path / f"{name}.png"
    _chromium("--user-data-dir=" + str(tmp_path / f"profile-{name}"), f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (900, 1200)
    assert pixels.reshape(-1, 3).std(axis=0).max() > 0.02, "the screenshot is one colour"
    return pixels


def test_single_and_multi_run_reports_in_chromium(tmp_path):
    (a, _), (b, _) = _mlp_run(tmp_path / "a", "run-a", 12), _mlp_run(tmp_path / "b", "run-b", 9)
    single = ss.write_report(a.dir)
    _, errors = _dom(single, tmp_path, "broken", "<script>notDefinedAnywhere();</script>")  # the error check itself
    assert "notDefinedAnywhere" in errors
    _check(single, tmp_path, "single", ["Loss and training scalars", "Stable rank per layer and step",
                                        "Probe wnorm: metrics over steps", "Probe weights: values at step 8"])
    assert main(["report", str(a.dir), str(b.dir), "--out", str(tmp_path / "both.html")]) == 0
    _check(tmp_path / "both.html", tmp_path, "multi", ["Loss and training scalars", "Weight metrics over steps per kind",
                                                        "Latest values side by side"])
