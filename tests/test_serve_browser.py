"""`vharm serve` in a real browser: headless Chromium opens the page, uploads a generated clip and its mask, moves
the strength and G's steps sliders, reads the preview's pixels, turns two passes on, exports and downloads. Skipped,
saying why, without Playwright or a system Chromium (`.ci/run` installs Debian's `chromium`)."""

from __future__ import annotations

import av
import numpy as np
import pytest
from browser import browser_page, canvas_pixels, open_composite, set_slider, vharm_serve, why_no_browser
from conftest import scene, write_video

pytestmark = pytest.mark.skipif(why_no_browser() is not None, reason=f"no browser test: {why_no_browser()}")

W, H, FRAMES = 160, 120, 10


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A composite video (an orange foreground blob on a blue-green background: far enough off that the shipped
    weights' gate lets G's change through, and one step of G changes it less than three) and its mask video."""
    root = tmp_path_factory.mktemp("browser")
    frames = [scene(H, W, t) for t in range(FRAMES)]
    return (write_video(root / "comp.mp4", [f[0] for f in frames]),
            write_video(root / "mask.mp4", [f[1] for f in frames]), frames[0][1])


def test_strength_preview_and_export_in_a_browser(clip, tmp_path):
    comp, mask_video, mask = clip
    # The server's temporary files go to TMPDIR: after Ctrl-C there must be none left.
    with vharm_serve(env={"TMPDIR": str(tmp_path)}) as url, browser_page() as page:
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        open_composite(page, url, comp, mask_video)
        assert page.locator("#error").is_hidden()
        before = canvas_pixels(page, "#result").astype(int)
        inp = canvas_pixels(page, "#input").astype(int)
        set_slider(page, "strength", 2)
        after = canvas_pixels(page, "#result").astype(int)
        # The preview copy is the clip's size here (under 854x480), so the generated mask marks its pixels.
        inside, outside = mask == 255, mask == 0

        def kept_outside(x):  # the mask video's codec noise (a level above 0) times G's change moves a pixel by 1
            return np.abs(x - inp)[outside].max() <= 1

        assert kept_outside(after) and kept_outside(before)
        change = np.abs(after - inp)[inside].mean()
        assert change > 5 and change > 1.5 * np.abs(before - inp)[inside].mean()
        # G's steps (the shipped weights: 3): a count, shown as a whole number; one step moves the foreground less
        set_slider(page, "g_steps", 1)
        assert page.locator("#g_steps-value").inner_text() == "1"
        one_step = canvas_pixels(page, "#result").astype(int)
        assert kept_outside(one_step)
        assert 0 < np.abs(one_step - inp)[inside].mean() < change / 1.5
        set_slider(page, "g_steps", 3)

        # The wipe shows the input left of its line and the result right of it, over the same frame.
        page.check("input[name=view][value=wipe]")
        page.fill("#wipe-position", "0.5")
        wipe = canvas_pixels(page, "#wipe").astype(int)
        assert np.array_equal(wipe[:, : W // 2 - 1], inp[:, : W // 2 - 1])
        assert np.array_equal(wipe[:, W // 2 + 1:], after[:, W // 2 + 1:])

        # Two passes, once the clip is read: the preview from the shot plan; the export below is made with it too.
        page.check("input[name=view][value=pair]")
        page.wait_for_selector("#two_pass:enabled", timeout=60_000)
        page.check("#two_pass")
        page.wait_for_function("document.querySelector('#result').dataset['two_pass'] === 'true'", timeout=30_000)
        shot = canvas_pixels(page, "#result").astype(int)
        assert kept_outside(shot) and np.abs(shot - inp)[inside].mean() > 5

        page.click("#export-button")
        page.wait_for_selector("#download:not([hidden])", timeout=120_000)
        with page.expect_download() as download:
            page.click("#download")
        saved = tmp_path / "download.mp4"
        download.value.save_as(saved)
        assert download.value.suggested_filename == "comp-harmonized.mp4"
        assert errors == [] and page.locator("#error").is_hidden()
    with av.open(str(saved)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in c.decode(video=0)) == FRAMES
    assert list(tmp_path.glob("vharm-serve-*")) == []
