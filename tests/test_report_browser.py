"""report.html in headless Chromium: loads without console errors, shows one card per concept."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conceptree.concepts.options import ConceptOptions
from conceptree.explain import explain
from conceptree.models.cifar_resnet import CIFAR10_CLASSES

from . import helpers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory, cifar_image):
    out = tmp_path_factory.mktemp("report")
    names = list(CIFAR10_CLASSES)
    names[3] = "cat <script>alert(1)</script> & co"  # must be escaped, not executed
    result = explain(helpers.cifar_model(), cifar_image, class_names=names, options=ConceptOptions(k_range=(3, 8)))
    result.save(out / "exp")
    return out / "exp" / "report.html", result


def test_report_is_self_contained_and_escaped(report):
    path, result = report
    text = path.read_text()
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text
    assert text.count("class='card'") == result.concepts.k
    assert "http://" not in text and "https://" not in text  # nothing fetched from the network


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    path, result = report
    user_dir = tmp_path / "profile"
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={user_dir}", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="card"') == result.concepts.k
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console_errors, console_errors
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={user_dir}", f"--screenshot={shot}", "--window-size=1280,2400", path.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert shot.stat().st_size > 10_000
