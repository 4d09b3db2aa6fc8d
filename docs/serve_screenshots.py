"""Retakes docs/serve-side-by-side.png and docs/serve-export.png: `vharm serve` started as a user starts it, driven in
headless Chromium (tests/browser.py) on a real composite, checked on the way (the preview changes the mask only, the
download has every frame).

    python docs/serve_screenshots.py COMP MASK [--frame N] [--strength S] [-o docs]

The screenshots in docs/ are of `make demo`'s composite (the astronaut on the launch pad, made by the package
itself; since 2026-12-04 the shipped gate leaves the breakdancer on DAVIS libby, the README's 480p composite, as it
is):

    vharm demo -o demo-output
    python docs/serve_screenshots.py demo-output/input.mp4 demo-output/mask.mp4 --frame 12
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import (  # noqa: E402
    browser_page,
    canvas_pixels,
    open_composite,
    set_slider,
    vharm_serve,
    why_no_browser,
)

WIDTH = 1280  # the browser window, CSS pixels
MAX_BYTES = 300_000  # per screenshot, for the repository


def save_small(png: bytes, path: Path) -> None:
    """A screenshot as a PNG under MAX_BYTES: 256 colours (the page is flat grey around two photos), then smaller
    until it fits."""
    import io

    image = Image.open(io.BytesIO(png)).convert("RGB")
    while True:
        small = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
        buf = io.BytesIO()
        small.save(buf, "PNG", optimize=True)
        if buf.tell() <= MAX_BYTES:
            path.write_bytes(buf.getvalue())
            print(f"wrote {path}: {image.width}x{image.height}, {buf.tell() // 1000} kB")
            return
        image = image.resize((image.width * 9 // 10, image.height * 9 // 10), Image.Resampling.LANCZOS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("composite", type=Path)
    p.add_argument("mask", type=Path)
    p.add_argument("--frame", type=int, default=0, help="the frame shown")
    p.add_argument("--strength", type=float, default=1.0, help="the strength slider's position")
    p.add_argument("-o", "--output", type=Path, default=Path(__file__).parent)
    args = p.parse_args()
    if why_no_browser():
        sys.exit(f"serve_screenshots: {why_no_browser()}")
    with tempfile.TemporaryDirectory() as tmp, vharm_serve() as url, browser_page(WIDTH, 1000) as page:
        open_composite(page, url, args.composite, args.mask)
        page.wait_for_function("document.querySelector('#read-status').textContent === ''", timeout=300_000)
        page.fill("#frame", str(args.frame))
        page.wait_for_selector(f"#result[data-frame='{args.frame}']", state="attached")
        set_slider(page, "strength", args.strength)
        inp, out = canvas_pixels(page, "#input").astype(int), canvas_pixels(page, "#result").astype(int)
        print(f"frame {args.frame}: the preview changes {np.mean(np.any(inp != out, axis=-1)):.1%} of the pixels")
        save_small(page.screenshot(full_page=True), args.output / "serve-side-by-side.png")

        page.check("input[name=view][value=wipe]")
        page.fill("#wipe-position", "0.4")
        page.check("#show-mask")
        page.wait_for_timeout(500)  # the mask overlay's request
        page.click("#export-button")
        page.wait_for_selector("#download:not([hidden])", timeout=600_000)
        with page.expect_download() as download:
            page.click("#download")
        saved = Path(tmp) / "export.mp4"
        download.value.save_as(saved)
        with av.open(str(saved)) as c, av.open(str(args.composite)) as src:
            frames = sum(1 for _ in c.decode(video=0))
            print(f"export: {frames} frames (the composite: {sum(1 for _ in src.decode(video=0))})")
        page.evaluate("document.querySelector('#export').scrollIntoView()")
        save_small(page.screenshot(full_page=True), args.output / "serve-export.png")


if __name__ == "__main__":
    main()
