"""`vharm serve` through FastAPI's test client: every endpoint, the errors the page shows (the CLI's messages, with the
browser's file names), a job's progress and result, temporary files, the job queue, and the `vharm serve` command."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from conftest import (
    VIDEO_FPS,
    VIDEO_FRAMES,
    VIDEO_H,
    VIDEO_W,
    blob_mask,
    imwrite,
    perturb_generator,
    scene,
    tiny_model_cfg,
    write_vfr_video,
    write_video,
)

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from vharm import Harmonizer  # noqa: E402
from vharm.models import Generator  # noqa: E402
from vharm.serve.app import create_app  # noqa: E402
from vharm.serve.jobs import Job, JobQueue  # noqa: E402


@pytest.fixture(scope="module")
def harmonizer(weights_dir) -> Harmonizer:
    return Harmonizer.from_pretrained(weights_dir)


@pytest.fixture(scope="module")
def served(harmonizer, tmp_path_factory):
    """(client, the server's temporary directory's parent): one app for the module's tests."""
    parent = tmp_path_factory.mktemp("serve")
    app = create_app(harmonizer, tempdir=parent, allowed_hosts=["testserver"], max_upload=2_000_000)
    with TestClient(app) as client:
        yield client, parent


@pytest.fixture()
def client(served) -> TestClient:
    return served[0]


def post_file(client: TestClient, name: str, data: bytes):
    return client.post("/api/uploads", files={"file": (name, data, "application/octet-stream")})


def send(client: TestClient, name: str, data: bytes) -> dict:
    r = post_file(client, name, data)
    assert r.status_code == 201, r.text
    return r.json()


def upload(client: TestClient, path: Path, name: str | None = None) -> str:
    return send(client, name or Path(path).name, Path(path).read_bytes())["id"]


def zip_of(folder: Path, prefix: str = "frames/") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(Path(folder).iterdir()):
            z.write(p, prefix + p.name)
    return buf.getvalue()


def wait(client: TestClient, url: str, until=lambda d: d["status"] not in ("queued", "running", "reading"),
         timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        data = client.get(url).json()
        if until(data) or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def open_clip(client: TestClient, **request) -> dict:
    r = client.post("/api/clips", json=request)
    assert r.status_code == 201, r.text
    clip = wait(client, f"/api/clips/{r.json()['id']}")
    assert clip["status"] == "ready", clip
    return clip


def png(client: TestClient, url: str, **params) -> np.ndarray:
    r = client.get(url, params=params)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    return cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)


def error(response, status: int, *needles: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and "/tmp" not in message and "vharm-serve-" not in message, message
    for n in needles:
        assert n in message, (n, message)
    return message


@pytest.fixture(scope="module")
def clip(served, media) -> dict:
    """The composite video with its mask video, opened and read."""
    client = served[0]
    return open_clip(client, composite=upload(client, media["video"]), mask=upload(client, media["mask_video"]))


# ------------------------------------------------------------------------------------------------- the page


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for ref in ("/static/app.js", "/static/style.css"):
        assert ref in page.text
        assert client.get(ref).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    assert client.get("/static/../app.py").status_code == 404


def test_info_gives_the_models_settings_and_their_ranges(client, harmonizer, tmp_path):
    info = client.get("/api/info").json()
    settings = {s["name"]: s for s in info["settings"]}
    assert info["settings"][0]["name"] == "strength" and set(settings) == {"strength", "temporal_smoothing",
                                                                           "min_change", "full_change",
                                                                           "mask_free_gate", "brighten",
                                                                           "darken_gate", "g_steps"}
    assert (settings["strength"]["min"], settings["strength"]["max"], settings["strength"]["value"]) == (0, 2, 1)
    assert settings["temporal_smoothing"]["max"] < 1 and settings["min_change"]["flag"] == "--min-change"
    assert (settings["g_steps"]["min"], settings["g_steps"]["max"], settings["g_steps"]["step"]) == (1, 10, 1)
    # every default sits on its slider's steps (the page would snap it, and preview other settings than the CLI's),
    # and so does every setting of the shipped weights
    def on_steps(settings):
        return all(abs(s["value"] / s["step"] - round(s["value"] / s["step"])) < 1e-6 for s in settings)

    assert on_steps(settings.values())
    with TestClient(create_app(Harmonizer.from_pretrained("default"), tempdir=tmp_path,
                               allowed_hosts=["testserver"])) as shipped:
        assert on_steps(shipped.get("/api/info").json()["settings"])
    assert info["discriminator"] and info["max_upload"] == 2_000_000 and info["max_upload_text"] == "2 MB"


def test_other_host_headers_are_refused(client):
    # DNS rebinding: a web page of another site, resolved to 127.0.0.1, must not reach the API.
    assert client.get("/api/info", headers={"host": "evil.example"}).status_code == 400


# ---------------------------------------------------------------------------------------- clips and previews


def test_clip_reads_every_frame(clip):
    assert (clip["ready"], clip["total"], clip["width"], clip["height"]) == (VIDEO_FRAMES, VIDEO_FRAMES, VIDEO_W,
                                                                            VIDEO_H)
    assert (clip["preview_width"], clip["preview_height"], clip["fps"], clip["mask"]) == (VIDEO_W, VIDEO_H,
                                                                                         VIDEO_FPS, "file")
    assert not clip["image"] and not clip["audio"] and clip["warnings"] == [] and clip["error"] is None


def test_preview_changes_the_mask_only_and_follows_the_strength(client, clip):
    base = f"/api/clips/{clip['id']}/frames/3"
    inp, mask = png(client, f"{base}/input.png"), png(client, f"{base}/mask.png")
    assert inp.shape == (VIDEO_H, VIDEO_W, 3) and mask.shape == (VIDEO_H, VIDEO_W)
    results = {s: png(client, f"{base}/result.png", strength=s).astype(int) for s in (0, 1, 2)}
    outside, inside = mask == 0, mask == 255
    assert np.array_equal(results[0], inp)
    for s in (1, 2):
        assert np.array_equal(results[s][outside], inp[outside])
    change = {s: np.abs(results[s] - inp)[inside].mean() for s in (1, 2)}
    assert change[1] > 3 and change[2] > 1.5 * change[1]


def test_preview_says_how_much_it_changed(client, clip):
    """X-Vharm-Change: the RMS change over the mask in levels, 0 when the strength is 0 or the gate drops it."""
    url = f"/api/clips/{clip['id']}/frames/2/result.png"
    change = {s: float(client.get(url, params={"strength": s}).headers["X-Vharm-Change"]) for s in (0, 1, 2)}
    assert change[0] == 0 and change[1] > 3 and change[2] == pytest.approx(2 * change[1], rel=0.15)
    gated = client.get(url, params={"min_change": 255, "full_change": 255, "strength": 2})
    assert float(gated.headers["X-Vharm-Change"]) == 0


def test_preview_is_the_harmonizers_step(client, clip, harmonizer):
    """The preview of a frame is `Harmonizer.step` on the preview copy, with the settings given (smoothing: from the
    frames before it)."""
    base = f"/api/clips/{clip['id']}"
    frames = [cv2.cvtColor(png(client, f"{base}/frames/{i}/input.png"), cv2.COLOR_BGR2RGB) for i in range(4)]
    masks = [png(client, f"{base}/frames/{i}/mask.png").astype(np.float32) / 255 for i in range(4)]
    h = harmonizer.with_options(temporal_smoothing=0.5, strength=1.5)
    state = None
    for rgb, m in zip(frames, masks):
        expected, _, state = h.step(rgb, m, state)
    got = png(client, f"{base}/frames/3/result.png", temporal_smoothing=0.5, strength=1.5)
    assert np.array_equal(cv2.cvtColor(got, cv2.COLOR_BGR2RGB), expected)
    # Playing on from frame 3 with the same settings carries the state: frame 4 as after frames 0..4.
    rgb, m = cv2.cvtColor(png(client, f"{base}/frames/4/input.png"), cv2.COLOR_BGR2RGB), \
        png(client, f"{base}/frames/4/mask.png").astype(np.float32) / 255
    expected = h.step(rgb, m, state)[0]
    got = png(client, f"{base}/frames/4/result.png", temporal_smoothing=0.5, strength=1.5)
    assert np.array_equal(cv2.cvtColor(got, cv2.COLOR_BGR2RGB), expected)


def test_disharmony_map(client, clip, harmonizer):
    dmap = png(client, f"/api/clips/{clip['id']}/frames/0/dmap.png")
    assert dmap.shape == (VIDEO_H, VIDEO_W) and dmap.dtype == np.uint8 and dmap.max() > dmap.min()


def test_preview_errors(client, clip):
    base = f"/api/clips/{clip['id']}/frames"
    error(client.get(f"{base}/{VIDEO_FRAMES}/input.png"), 404, "comp.mp4", f"frame {VIDEO_FRAMES}", "not read")
    error(client.get(f"{base}/0/result.png", params={"strength": 3}), 400, "strength", "--strength", "[0, 2]")
    error(client.get(f"{base}/0/result.png", params={"min_change": 5, "full_change": 2}), 400, "min_change")
    error(client.get(f"{base}/0/result.png", params={"strength": "lots"}), 422, "strength")
    error(client.get("/api/clips/0123456789abcdef/frames/0/input.png"), 404, "no clip")


def test_preview_at_480p_with_smoothing_warm_up(client, tmp_path):
    """A 480p clip previews at 480p, with temporal smoothing's warm-up over the frames before (its speed is
    measured in docs/serve.md, not asserted: timings depend on the machine)."""
    frames = [scene(480, 854, t)[0] for t in range(50)]
    masks = [scene(480, 854, t)[1] for t in range(50)]
    clip = open_clip(client, composite=upload(client, write_video(tmp_path / "big.mp4", frames, crf=28)),
                     mask=upload(client, write_video(tmp_path / "big-mask.mp4", masks, crf=28)))
    assert (clip["preview_width"], clip["preview_height"]) == (854, 480)
    plain = png(client, f"/api/clips/{clip['id']}/frames/49/result.png", strength=1.3)
    smooth = png(client, f"/api/clips/{clip['id']}/frames/49/result.png", strength=1.3, temporal_smoothing=0.9)
    assert plain.shape == smooth.shape == (480, 854, 3)
    client.delete(f"/api/clips/{clip['id']}")


def test_mask_modes(client, media, tmp_path):
    comp = upload(client, media["video"])
    free = open_clip(client, composite=comp, mask="none")
    used = png(client, f"/api/clips/{free['id']}/frames/0/mask.png")
    assert free["mask"] == "none" and used.shape == (VIDEO_H, VIDEO_W) and used.max() > 0  # made from D's map
    auto = open_clip(client, composite=comp, mask="auto")
    assert auto["mask"] == "auto" and png(client, f"/api/clips/{auto['id']}/frames/0/mask.png").shape == (VIDEO_H,
                                                                                                       VIDEO_W)
    rgba = open_clip(client, composite=send(client, "rgba.zip", zip_of(media["rgba_frames"]))["id"], mask="alpha")
    assert rgba["ready"] == VIDEO_FRAMES and png(client, f"/api/clips/{rgba['id']}/frames/0/mask.png").max() == 255
    # alpha of a video: none; the CLI's message
    r = client.post("/api/clips", json={"composite": comp, "mask": "alpha"})
    failed = wait(client, f"/api/clips/{r.json()['id']}")
    assert failed["status"] == "failed" and "no mask" in failed["error"] and "comp.mp4" in failed["error"]


def test_zips_of_frames_for_composite_and_mask(client, media):
    comp = send(client, "frames.zip", zip_of(media["frames"]))
    mask = send(client, "masks.zip", zip_of(media["mask_frames"], prefix="nested/dir/"))
    assert comp["kind"] == mask["kind"] == "frames"
    clip = open_clip(client, composite=comp["id"], mask=mask["id"])
    assert clip["ready"] == VIDEO_FRAMES and clip["name"] == "frames.zip"


def test_paste_a_foreground_over_a_background(client, media, tmp_path):
    bg = np.full((80, 96, 3), (30, 90, 160), np.uint8)
    clip = open_clip(client, foreground=upload(client, media["video"], "fg.mp4"),
                     foreground_mask=upload(client, media["mask_video"], "alpha.mp4"),
                     background=upload(client, imwrite(tmp_path / "bg.png", bg)), position=[10, 20])
    assert (clip["width"], clip["height"], clip["ready"], clip["mask"]) == (96, 80, VIDEO_FRAMES, "pasted")
    inp = png(client, f"/api/clips/{clip['id']}/frames/0/input.png")
    assert np.array_equal(inp[:15], cv2.cvtColor(bg, cv2.COLOR_RGB2BGR)[:15])  # above the pasted foreground
    job = client.post(f"/api/clips/{clip['id']}/export", json={}).json()
    assert wait(client, f"/api/jobs/{job['id']}")["status"] == "done"
    with av.open(io.BytesIO(client.get(f"/api/jobs/{job['id']}/download").content)) as c:
        assert sum(1 for _ in c.decode(video=0)) == VIDEO_FRAMES


# ------------------------------------------------------------------------------------------------- errors


def test_bad_inputs_give_the_clis_messages(client, media, tmp_path):
    text = send(client, "notes.txt", b"not a video at all")
    error(client.post("/api/clips", json={"composite": text["id"], "mask": "none"}), 400, "notes.txt",
          "not a readable video")
    small = upload(client, imwrite(tmp_path / "small-mask.png", blob_mask(20, 20, 10, 10, 5, 5)))
    error(client.post("/api/clips", json={"composite": upload(client, media["video"]), "mask": small}), 400,
          "small-mask.png", "mask size 20x20 differs from the input's 64x48")
    few = write_video(tmp_path / "few.mp4", [blob_mask(VIDEO_H, VIDEO_W, 30, 20, 10, 10)] * 3)
    error(client.post("/api/clips", json={"composite": upload(client, media["video"]), "mask": upload(client, few)}),
          400, "few.mp4", "3 mask frames for 8 input frames")
    # A cut-off mp4 has lost its index: not readable, as the CLI says.
    data = Path(media["video"]).read_bytes()
    cut = send(client, "cut.mp4", data[: len(data) // 2])
    error(client.post("/api/clips", json={"composite": cut["id"], "mask": "none"}), 400, "cut.mp4",
          "not a readable video")


def test_truncated_video_is_read_as_far_as_it_goes_with_a_warning(client, tmp_path):
    path = write_video(tmp_path / "clip.mkv", [scene(VIDEO_H, VIDEO_W, t)[0] for t in range(24)])
    data = path.read_bytes()
    clip = open_clip(client, composite=send(client, "cut.mkv", data[: len(data) * 2 // 3])["id"], mask="none")
    assert 0 < clip["ready"] < 24
    assert len(clip["warnings"]) == 1 and clip["warnings"][0].startswith("cut.mkv: ") and "truncated" in \
        clip["warnings"][0]


def test_upload_errors(client, served, media):
    # Counted as it arrives (a body just over the limit), and refused from its Content-Length (far over it).
    error(post_file(client, "big.mp4", b"x" * 2_000_001), 413, "big.mp4", "larger than the upload limit of "
          "2 MB", "--max-upload")
    error(post_file(client, "huge.mp4", b"x" * 2_100_000), 413, "this upload: larger than")
    error(client.post("/api/uploads", content=b"raw", headers={"content-type": "application/octet-stream"}), 400,
          "multipart/form-data")
    error(client.post("/api/uploads", files={"other": ("a.mp4", b"data")}), 400, "no file")
    error(post_file(client, "bad.zip", b"PK not really"), 400, "bad.zip", "not a readable zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "no frames here")
    error(post_file(client, "empty.zip", buf.getvalue()), 400, "empty.zip", "no frames in this zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:  # 3 MB of zeros: a small zip, too big unpacked
        z.writestr("00000.png", bytes(3_000_000))
    error(post_file(client, "bomb.zip", buf.getvalue()), 400, "bomb.zip", "unpack to more than")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/00000.png", b"1")
        z.writestr("b/00000.png", b"2")
    error(post_file(client, "twice.zip", buf.getvalue()), 400, "two images named 00000.png")
    uploads = served[1]
    assert not any(p.name == "upload.mp4" and p.stat().st_size > 2_000_000 for p in uploads.rglob("*"))


def test_names_from_the_browser_never_reach_the_file_system(client, served, media):
    root = next(served[1].glob("vharm-serve-*"))
    before = {p for p in served[1].rglob("*")}
    up = send(client, "../../../escape.mp4", Path(media["video"]).read_bytes())
    assert up["name"] == "escape.mp4"
    new = {p for p in served[1].rglob("*")} - before
    assert new and all(p.is_relative_to(root / "uploads") and "escape" not in p.name for p in new)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../../outside.png", cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes())
    assert send(client, "sneaky.zip", buf.getvalue())["kind"] == "frames"
    (found,) = served[1].rglob("outside.png")
    assert found.parent.name == "frames" and found.parent.parent.parent == root / "uploads"


def test_opening_needs_known_uploads_and_one_kind_of_input(client, media, weights_no_d, tmp_path):
    error(client.post("/api/clips", json={"composite": "0123456789abcdef", "mask": "none"}), 404, "no upload")
    comp = upload(client, media["video"])
    error(client.post("/api/clips", json={"composite": comp, "foreground": comp, "background": comp}), 400,
          "either a composite")
    error(client.post("/api/clips", json={"foreground": comp}), 400, "background")
    error(client.post("/api/clips", json={"composite": comp, "length": "forever"}), 422, "length")
    app = create_app(Harmonizer.from_pretrained(weights_no_d), tempdir=tmp_path, allowed_hosts=["testserver"])
    with TestClient(app) as other:
        assert not other.get("/api/info").json()["discriminator"]
        comp = upload(other, media["video"])
        error(other.post("/api/clips", json={"composite": comp, "mask": "none"}), 400, "discriminator")


def test_unknown_ids_are_404(client):
    for url in ("/api/clips/nope", "/api/jobs/nope", "/api/jobs/nope/download"):
        error(client.get(url), 404, "no ")
    error(client.delete("/api/uploads/nope"), 404, "no upload")
    error(client.post("/api/clips/nope/export", json={}), 404, "no clip")


# ----------------------------------------------------------------------------------------------------- exports


def test_export_reports_progress_and_gives_an_mp4_with_the_inputs_rate_and_audio(client, harmonizer, tmp_path):
    src = write_vfr_video(tmp_path / "talk.mp4", [0, 100, 200, 300, 400, 500], audio=True)
    mask = write_video(tmp_path / "talk-mask.mp4", [blob_mask(VIDEO_H, VIDEO_W, 30, 24, 14, 12)] * 6)
    clip = open_clip(client, composite=upload(client, src), mask=upload(client, mask))
    assert clip["audio"] and clip["fps"] == 10
    r = client.post(f"/api/clips/{clip['id']}/export", json={"strength": 1.5, "temporal_smoothing": 0.3})
    assert r.status_code == 202 and r.json()["kind"] == "export" and r.json()["total"] == 6
    seen = []
    job = wait(client, f"/api/jobs/{r.json()['id']}", until=lambda d: seen.append(d["done"]) or d["status"] in (
        "done", "failed"))
    assert job["status"] == "done" and job["done"] == job["total"] == 6 and seen == sorted(seen), job
    assert job["download"] == "talk-harmonized.mp4"
    got = client.get(f"/api/jobs/{job['id']}/download")
    assert got.status_code == 200 and got.headers["content-type"] == "video/mp4"
    assert 'filename="talk-harmonized.mp4"' in got.headers["content-disposition"]
    (tmp_path / "got.mp4").write_bytes(got.content)
    # The same as the CLI path with the same settings: harmonize_video with these options.
    expected = tmp_path / "cli.mp4"
    harmonizer.with_options(strength=1.5, temporal_smoothing=0.3).harmonize_video(src, mask, expected)
    with av.open(str(tmp_path / "got.mp4")) as a, av.open(str(expected)) as b:
        assert [s.type for s in a.streams] == ["video", "audio"]
        assert a.streams.video[0].average_rate == b.streams.video[0].average_rate
        ours = [f.to_ndarray(format="rgb24") for f in a.decode(video=0)]
        theirs = [f.to_ndarray(format="rgb24") for f in b.decode(video=0)]
    assert len(ours) == 6 and all(same_encoded(x, y) for x, y in zip(ours, theirs))


@pytest.fixture(scope="module")
def global_served(tmp_path_factory):
    """(client, harmonizer): an app around a tiny G that predicts one transform per frame (two passes need it)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "global"
    perturb_generator(Generator(tiny_model_cfg(grid=1))).save_pretrained(path)
    harmonizer = Harmonizer.from_pretrained(path)
    app = create_app(harmonizer, tempdir=tmp_path_factory.mktemp("serve-global"), allowed_hosts=["testserver"])
    with TestClient(app) as client:
        yield client, harmonizer


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal but for 8-bit rounding: the server's threads run torch with another thread count than the test's,
    which can reorder a sum over the frame's pixels (a shot's transform is a mean of means)."""
    diff = np.abs(a.astype(int) - b)
    return diff.max() <= 1 and (diff == 0).mean() > 0.98


def same_encoded(a: np.ndarray, b: np.ndarray) -> bool:
    """Two decoded H.264 frames of the same harmonized frame, up to `close`'s 8-bit rounding before encoding: x264
    answers a pixel one level off with other local choices (measured: differences up to 24 levels on these tiny
    noisy frames, PSNR 37-43 dB between the two, the frame's mean colour within 0.2 levels), so compare the mean
    colour (a change of strength moves it by levels) and the PSNR, not pixels."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mse = ((a - b) ** 2).mean()
    return np.abs(a.mean((0, 1)) - b.mean((0, 1))).max() <= 0.5 and (mse == 0 or 10 * np.log10(255 ** 2 / mse) >= 33)


def test_two_passes_preview_the_shot_plan_and_export_as_the_cli(global_served, media, tmp_path):
    """`two_pass`: the preview applies the plan of the whole preview copy (`Harmonizer.plan_shots`), the export is
    `harmonize_video(..., two_pass=True)` frame for frame."""
    client, h = global_served
    clip = open_clip(client, composite=upload(client, media["video"]), mask=upload(client, media["mask_video"]))
    base = f"/api/clips/{clip['id']}/frames"
    frames = [cv2.cvtColor(png(client, f"{base}/{i}/input.png"), cv2.COLOR_BGR2RGB) for i in range(VIDEO_FRAMES)]
    masks = [png(client, f"{base}/{i}/mask.png").astype(np.float32) / 255 for i in range(VIDEO_FRAMES)]
    settings = {"strength": 1.5, "two_pass": "true"}
    plan = h.with_options(strength=1.5).plan_shots([h.estimate(f, m) for f, m in zip(frames, masks)])
    differs = 0
    for i in (0, 3, VIDEO_FRAMES - 1):
        got = cv2.cvtColor(png(client, f"{base}/{i}/result.png", **settings), cv2.COLOR_BGR2RGB)
        assert close(got, h.step(frames[i], masks[i], transform=plan[i])[0])
        one_pass = cv2.cvtColor(png(client, f"{base}/{i}/result.png", strength=1.5), cv2.COLOR_BGR2RGB)
        differs += not np.array_equal(got, one_pass)
    assert differs
    job = client.post(f"/api/clips/{clip['id']}/export", json={"strength": 1.5, "two_pass": True}).json()
    assert wait(client, f"/api/jobs/{job['id']}")["status"] == "done"
    (tmp_path / "got.mp4").write_bytes(client.get(f"/api/jobs/{job['id']}/download").content)
    expected = tmp_path / "cli.mp4"
    h.with_options(strength=1.5).harmonize_video(media["video"], media["mask_video"], expected, two_pass=True)
    with av.open(str(tmp_path / "got.mp4")) as a, av.open(str(expected)) as b:
        ours = [f.to_ndarray(format="rgb24") for f in a.decode(video=0)]
        theirs = [f.to_ndarray(format="rgb24") for f in b.decode(video=0)]
    assert len(ours) == VIDEO_FRAMES and all(same_encoded(x, y) for x, y in zip(ours, theirs))


def test_two_passes_preview_makes_the_estimates_again_for_other_g_steps(global_served, media):
    """The first pass's estimates hold G's steps (`Estimate.further`): a preview with other `g_steps` plans from
    estimates made with them, not from those kept for the settings before."""
    client, h = global_served
    clip = open_clip(client, composite=upload(client, media["video"]), mask=upload(client, media["mask_video"]))
    base = f"/api/clips/{clip['id']}/frames"
    frame = cv2.cvtColor(png(client, f"{base}/0/input.png"), cv2.COLOR_BGR2RGB)
    frames = [cv2.cvtColor(png(client, f"{base}/{i}/input.png"), cv2.COLOR_BGR2RGB) for i in range(VIDEO_FRAMES)]
    masks = [png(client, f"{base}/{i}/mask.png").astype(np.float32) / 255 for i in range(VIDEO_FRAMES)]
    got = {}
    for steps in (1, 3):
        got[steps] = cv2.cvtColor(png(client, f"{base}/0/result.png", two_pass="true", g_steps=steps),
                                  cv2.COLOR_BGR2RGB)
        hs = h.with_options(g_steps=steps)
        plan = hs.plan_shots([hs.estimate(f, m) for f, m in zip(frames, masks)])
        assert close(got[steps], hs.step(frame, masks[0], transform=plan[0])[0])
    assert not np.array_equal(got[1], got[3])


def test_two_passes_errors(client, clip, global_served, media, tmp_path):
    # Weights with a per-pixel transform: said on the page, as the CLI says it.
    error(client.get(f"/api/clips/{clip['id']}/frames/0/result.png", params={"two_pass": "true"}), 400,
          "one colour transform per frame")
    g_client = global_served[0]
    pasted = open_clip(g_client, foreground=upload(g_client, media["video"], "fg.mp4"),
                       foreground_mask=upload(g_client, media["mask_video"], "alpha.mp4"),
                       background=upload(g_client, imwrite(tmp_path / "bg.png", np.zeros((80, 96, 3), np.uint8))))
    error(g_client.post(f"/api/clips/{pasted['id']}/export", json={"two_pass": True}), 400, "composite file")


def test_export_of_an_image_is_a_png(client, media):
    clip = open_clip(client, composite=upload(client, media["image"]), mask=upload(client, media["image_mask"]))
    assert clip["image"] and clip["ready"] == 1
    job = client.post(f"/api/clips/{clip['id']}/export", json={}).json()
    done = wait(client, f"/api/jobs/{job['id']}")
    assert done["status"] == "done" and done["download"] == "frame_003-harmonized.png"
    got = client.get(f"/api/jobs/{job['id']}/download")
    assert got.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(got.content, np.uint8), cv2.IMREAD_COLOR).shape == (VIDEO_H, VIDEO_W, 3)


def test_export_errors_and_download_before_done(client, clip):
    error(client.post(f"/api/clips/{clip['id']}/export", json={"strength": -1}), 400, "--strength")
    error(client.post(f"/api/clips/{clip['id']}/export", json={"min_change": 9, "full_change": 1}), 400,
          "min_change")


def test_a_new_export_replaces_the_last_and_closing_removes_everything(client, served, media):
    comp = upload(client, media["video"])
    clip = open_clip(client, composite=comp, mask=upload(client, media["mask_video"]))
    first = client.post(f"/api/clips/{clip['id']}/export", json={}).json()
    assert wait(client, f"/api/jobs/{first['id']}")["status"] == "done"
    folder = next(served[1].glob("vharm-serve-*")) / "clips" / clip["id"]
    assert len(list((folder / "exports").rglob("*.mp4"))) == 1
    second = client.post(f"/api/clips/{clip['id']}/export", json={"strength": 0.5}).json()
    assert wait(client, f"/api/jobs/{second['id']}")["status"] == "done"
    assert len(list((folder / "exports").rglob("*.mp4"))) == 1 and client.get(f"/api/jobs/{first['id']}").status_code \
        == 404
    assert client.get(f"/api/clips/{clip['id']}").json()["export"] == second["id"]
    error(client.delete(f"/api/uploads/{comp}"), 409, "comp.mp4: still used")  # an upload in use stays
    assert client.delete(f"/api/clips/{clip['id']}").status_code == 204
    assert not folder.exists() and client.get(f"/api/jobs/{second['id']}").status_code == 404
    assert client.delete(f"/api/uploads/{comp}").status_code == 204
    assert not (folder.parent.parent / "uploads" / comp).exists()


def test_cancelling_a_job(client, clip):
    job = client.post(f"/api/clips/{clip['id']}/export", json={}).json()
    cancelled = client.delete(f"/api/jobs/{job['id']}").json()
    done = wait(client, f"/api/jobs/{job['id']}")
    assert cancelled["id"] == job["id"] and done["status"] in ("cancelled", "done")  # it may have finished first
    if done["status"] == "cancelled":
        error(client.get(f"/api/jobs/{job['id']}/download"), 409, "nothing to download")


def test_stopping_the_server_removes_its_files(harmonizer, media, tmp_path):
    with TestClient(create_app(harmonizer, tempdir=tmp_path, allowed_hosts=["testserver"])) as client:
        open_clip(client, composite=upload(client, media["video"]), mask=upload(client, media["mask_video"]))
        assert any(tmp_path.rglob("*.jpg"))
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------------------------- the queue


def test_job_queue_runs_one_job_at_a_time_in_order_and_cancels():
    queue = JobQueue()
    release, order, cleaned = threading.Event(), [], []

    def blocking(job: Job):
        order.append(job.id)
        for i in range(1, 1000):
            if release.wait(0.01):
                break
            job.progress(i)
        return None

    first = queue.submit(Job("export", "a", blocking, cleanup=lambda: cleaned.append("first")))
    second = queue.submit(Job("export", "a", lambda job: order.append(job.id), total=1))
    third = queue.submit(Job("export", "b", lambda job: order.append(job.id), cleanup=lambda: cleaned.append("3")))
    deadline = time.monotonic() + 10
    while first.status != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (first.status, second.status) == ("running", "queued")
    assert (queue.ahead(first), queue.ahead(second), queue.ahead(third)) == (0, 1, 2)
    third.cancel()  # queued: never starts
    assert third.status == "cancelled"
    first.cancel()  # running: stops at its next frame
    queue.close()
    assert (first.status, second.status, third.status) == ("cancelled", "cancelled", "cancelled")
    assert order == [first.id] and cleaned == ["first", "3"]
    assert first.to_json()["done"] >= 1 and first.to_json()["status"] == "cancelled"


def test_job_errors_are_recorded():
    queue = JobQueue()
    from vharm.errors import VharmError

    def bad(job):
        raise VharmError("x.mp4: not a readable video")

    def broken(job):
        raise RuntimeError("boom")

    jobs = [queue.submit(Job("export", "c", f)) for f in (bad, broken)]
    deadline = time.monotonic() + 10
    while any(j.finished is None for j in jobs) and time.monotonic() < deadline:
        time.sleep(0.01)
    queue.close()
    assert [(j.status, j.error) for j in jobs] == [("failed", "x.mp4: not a readable video"),
                                                  ("failed", "internal error: RuntimeError: boom")]


# ------------------------------------------------------------------------------------------- the command line


def test_serve_command_binds_loopback_and_warns_for_other_hosts(run_cli, weights_dir, monkeypatch):
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: started.append((self, sockets)))
    code, out, err = run_cli("serve", "--port", "0", "--weights", weights_dir)
    assert code == 0 and err == "", err
    server, (sock,) = started[0]
    host, port = sock.getsockname()[:2]
    assert host == "127.0.0.1" and f"http://127.0.0.1:{port}/" in out
    sock.close()
    code, out, err = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--weights", weights_dir)
    assert code == 0 and "warning: --host 0.0.0.0" in err and "no login" in err
    started[1][1][0].close()


def test_serve_command_errors(run_cli, weights_dir):
    from test_cli import assert_one_line_error

    code, _, err = run_cli("serve", "--max-upload", "lots", "--weights", weights_dir)
    assert_one_line_error(code, err, "--max-upload 'lots'", "2GB")
    code, _, err = run_cli("serve", "--strength", "5", "--weights", weights_dir)
    assert_one_line_error(code, err, "--strength")
    taken = __import__("socket").socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        code, _, err = run_cli("serve", "--port", taken.getsockname()[1], "--weights", weights_dir)
        assert_one_line_error(code, err, "--port", "cannot listen")
    finally:
        taken.close()
