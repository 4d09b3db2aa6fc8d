"""Driving `vharm serve` in a real browser: the command started as a user starts it, headless Chromium from the system
(Debian's `chromium`; Playwright's own browser download is not needed) driven by Playwright for Python. Used by
tests/test_serve_browser.py and docs/serve_screenshots.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    """The system's Chromium (or Chrome) executable, if any; $VHARM_CHROMIUM names another."""
    return os.environ.get("VHARM_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)


def why_no_browser() -> str | None:
    """Why a browser test cannot run here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    if chromium() is None:
        return "no Chromium on this machine (apt-get install -y chromium)"
    return None


@contextlib.contextmanager
def vharm_serve(*args: str, env: dict | None = None):
    """Runs `python -m vharm serve --port 0 ARGS` and yields the address it prints; stops it with Ctrl-C (SIGINT) as
    a user would, and checks that it stopped as the CLI does on Ctrl-C: "vharm: interrupted", exit status 130."""
    # A shell runs background jobs with SIGINT ignored, and a child inherits that: restore the default, so that
    # the Ctrl-C below reaches the server as it does from a terminal.
    process = subprocess.Popen([sys.executable, "-m", "vharm", "serve", "--port", "0", *args], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = process.stdout.readline()
        found = re.search(r"http://\S+/", line)
        if found is None:
            process.kill()
            raise RuntimeError(f"vharm serve did not start: {line}{process.stderr.read()}")
        yield found.group(0)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    stderr = process.stderr.read()
    assert process.returncode == 130 and stderr.strip() == "vharm: interrupted", stderr


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 900):
    """A headless Chromium page (downloads allowed)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True)
        try:
            yield browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
        finally:
            browser.close()


def canvas_pixels(page, selector: str) -> np.ndarray:
    """The RGB pixels (H, W, 3) uint8 a canvas of the page holds (not what the screen shows: its own pixels)."""
    width, height, data = page.evaluate(
        """(selector) => {
            const c = document.querySelector(selector);
            return [c.width, c.height, Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data)];
        }""", selector)
    return np.array(data, np.uint8).reshape(height, width, 4)[..., :3]


def open_composite(page, url: str, composite: Path, mask: Path, timeout_ms: float = 60_000) -> None:
    """Opens `url`, uploads a composite and its mask file, and waits for the first preview."""
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    page.set_input_files("#composite", str(composite))
    page.select_option("#mask-mode", "file")
    page.set_input_files("#mask", str(mask))
    page.click("#open-button")
    page.wait_for_selector("#result[data-frame='0']", state="attached", timeout=timeout_ms)


def set_slider(page, name: str, value: float, timeout_ms: float = 30_000) -> None:
    """Moves a setting's slider and waits for the preview made with it."""
    page.fill(f"#{name}", str(value))
    page.wait_for_function(f"document.querySelector('#result').dataset['{name}'] === '{value:g}'", timeout=timeout_ms)
