"""report.html in a real browser: headless Chromium renders it to a PNG that must show the
table and the charts (not a blank or broken page).

Skipped when /usr/bin/chromium is absent, unless QUANTBUILD_REQUIRE_BROWSER=1 (CI sets it),
which turns the skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from builders import device_recipes, make_project
from cli_runner import run_cli
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 2200


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    why = f"{CHROMIUM} not found (Debian: apt-get install chromium)"
    if os.environ.get("QUANTBUILD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"QUANTBUILD_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why)


def screenshot(page: Path, png: Path, profile: Path) -> np.ndarray:
    """Render `page` in headless Chromium; the screenshot as an RGB array."""
    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={WIDTH},{HEIGHT}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
    return np.asarray(Image.open(png).convert("RGB")).astype(np.int16)


def _near(pixels: np.ndarray, hex_color: str, tolerance: int = 24) -> np.ndarray:
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)], np.int16)
    return np.abs(pixels - rgb).max(axis=-1) <= tolerance


def test_report_renders_with_visible_charts(tmp_path, monkeypatch):
    _require_chromium()
    monkeypatch.delenv("QUANTBUILD_CACHE", raising=False)
    recipes = device_recipes()
    root = make_project(tmp_path / "proj", recipes)
    built = run_cli("build", "-C", str(root))
    assert built.code == 0, built.stdout + built.stderr
    pixels = screenshot(root / "build" / "report.html", tmp_path / "report.png", tmp_path / "p")
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    ink = (pixels < 235).any(axis=-1)
    assert ink.mean() > 0.03, f"only {ink.mean():.1%} of the page is not white"
    # The first recipe's per-layer chart sits below the table: its bars are blue and red.
    top = pixels[: HEIGHT // 2]
    blue, red = _near(top, "#4c78a8").sum(), _near(top, "#e45756").sum()
    assert blue > 2000 and red > 2000, (blue, red)
    # Text is drawn: dark pixels in the table rows at the top of the page.
    assert (pixels[:200] < 80).all(axis=-1).sum() > 500
