"""`vharm serve`'s web app (FastAPI): the page, and the JSON API it drives.

The browser names nothing on the server but ids: it uploads files (`POST /api/uploads` -> an upload id), opens a
clip from upload ids (`POST /api/clips`, read in the background into a preview copy), asks for preview frames by
index with the inference settings as query parameters (`/api/clips/ID/frames/N/{input,result,mask,dmap}.png`), and
exports (`POST /api/clips/ID/export` -> a job it polls at `/api/jobs/ID`, then downloads). Every error is JSON
`{"error": "..."}` holding the CLI's one-line message, with the browser's file names in place of the server's paths.
Everything lives in one temporary directory, removed when the server stops; a Host header check keeps other web
sites from reaching a server on 127.0.0.1 through DNS rebinding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import cv2
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from vharm import __version__
from vharm.config import InferenceConfig, field_specs, flag
from vharm.errors import VharmError
from vharm.inference.harmonizer import Harmonizer
from vharm.serve.clips import MASK_MODES, PREVIEW_SIZE, Clip, change_levels, harmonize_source, paste_source
from vharm.serve.jobs import Job, JobQueue
from vharm.serve.uploads import TooLarge, Upload, Uploads, format_size

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 2 * 10**9  # bytes: `--max-upload 2GB`
LOCAL_HOSTS = ("127.0.0.1", "localhost")
# The slider's end for settings without one (the gate's levels): changes of over 30 levels (RMS, 0-255) are
# strong recolourings, and 30 as a threshold would leave almost every composite alone.
OPEN_RANGE_MAX = 30.0
MULTIPART_SLACK = 64 * 1024  # bytes a multipart body may hold beyond its file (boundaries, headers)
_PREFIX = re.compile(r"^vharm: (warning: )?")


class ApiError(Exception):
    """An HTTP error with a message for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def slider_step(hi: float) -> float:
    """The page's slider step for a setting that goes up to `hi`: every value the weights ship must sit on it, or
    the page would snap it and preview other settings than the CLI's (0.5 snapped the mask-free factor 1.6 to 1.5,
    0.1 the darkening factor 1.25 to 1.3)."""
    return 0.01 if hi <= 2 else 0.05 if hi <= 10 else 0.5


class Settings(BaseModel):
    """The inference settings of a preview or an export (`InferenceConfig`; those left out are the model's), and
    `two_pass`: one colour transform per shot (`vharm harmonize --two-pass`)."""

    strength: float | None = None
    temporal_smoothing: float | None = None
    min_change: float | None = None
    full_change: float | None = None
    mask_free_gate: float | None = None
    brighten: float | None = None
    darken_gate: float | None = None
    g_steps: int | None = None
    two_pass: bool = False

    def given(self) -> dict[str, float]:
        """The `InferenceConfig` fields given."""
        return {k: v for k, v in self.model_dump(exclude={"two_pass"}).items() if v is not None}


class OpenClip(BaseModel):
    """What the page opens: a composite and its mask (an upload id, or "auto", "none", "alpha"), or a foreground
    (with an optional mask upload) to paste over a background, as `vharm composite` does."""

    composite: str | None = None
    mask: str = "alpha"
    foreground: str | None = None
    foreground_mask: str | None = None
    background: str | None = None
    position: tuple[int, int] | None = None
    scale: float = 1.0
    length: Literal["shortest", "fg", "bg"] = "shortest"


class Server:
    """The state of one server: its model, temporary directory, uploads, clips and job queue. `start` and `stop`
    run with the app (its lifespan)."""

    def __init__(self, harmonizer: Harmonizer, max_upload: int, tempdir: Path | None, weights: str):
        self.harmonizer, self.max_upload, self.tempdir, self.weights = harmonizer, max_upload, tempdir, weights
        self.clips: dict[str, Clip] = {}
        self.lock = threading.Lock()

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vharm-serve-", dir=self.tempdir))
        self.uploads = Uploads(self.root / "uploads", self.max_upload)
        (self.root / "clips").mkdir()
        self.jobs = JobQueue()

    def stop(self) -> None:
        self.jobs.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def text(self, message: str) -> str:
        """A message as the page shows it: the browser's file names, no `vharm:` prefix."""
        return _PREFIX.sub("", self.uploads.public(message))

    # --------------------------------------------------------------------------------------------- lookups

    def upload(self, upload_id: str) -> Upload:
        try:
            return self.uploads.get(upload_id)
        except KeyError:
            raise ApiError(404, f"no upload {upload_id!r} (removed, or the server restarted): open the file "
                                "again") from None

    def clip(self, clip_id: str) -> Clip:
        with self.lock:
            clip = self.clips.get(clip_id)
        if clip is None:
            raise ApiError(404, f"no clip {clip_id!r} (closed, or the server restarted): open it again")
        return clip

    def job(self, job_id: str) -> Job:
        try:
            return self.jobs.get(job_id)
        except KeyError:
            raise ApiError(404, f"no job {job_id!r} (its clip was closed, or the server restarted)") from None

    def frame_index(self, clip: Clip, index: int) -> int:
        if not 0 <= index < clip.ready:
            total = clip.to_json()["total"]
            raise ApiError(404, f"{clip.name}: frame {index} is not read yet ({clip.ready} of "
                                f"{total if total is not None else '?'} frames read)")
        return index

    def harmonizer_for(self, settings: Settings) -> Harmonizer:
        return self.harmonizer.with_options(**settings.given())

    # ---------------------------------------------------------------------------------------------- JSON

    def job_json(self, job: Job) -> dict:
        data = job.to_json(self.jobs.ahead(job))
        data["error"] = data["error"] and self.text(data["error"])
        data["warnings"] = [self.text(w) for w in data["warnings"]]
        return data

    def clip_json(self, clip: Clip) -> dict:
        data = clip.to_json()
        data["warnings"] = [self.text(w) for w in clip.source.warnings]
        data["error"] = clip.prepare and clip.prepare.error and self.text(clip.prepare.error)
        return data

    def info(self) -> dict:
        defaults = dataclasses.asdict(self.harmonizer.inference_config)
        settings = []
        for spec in sorted(field_specs(InferenceConfig), key=lambda s: s.name != "strength"):  # strength first
            hi = spec.range.hi if spec.range.hi != math.inf else OPEN_RANGE_MAX
            step = 1 if spec.kind is int else slider_step(hi)  # a count: whole steps
            settings.append({"name": spec.name, "flag": flag(spec.name), "help": spec.help, "min": spec.range.lo,
                             "max": hi - step if spec.range.hi_open else hi, "step": step,
                             "value": defaults[spec.name]})
        return {"version": __version__, "weights": self.weights, "max_upload": self.max_upload,
                "max_upload_text": format_size(self.max_upload), "preview_size": PREVIEW_SIZE,
                "discriminator": self.harmonizer.discriminator is not None, "settings": settings,
                "mask_modes": MASK_MODES}

    # ------------------------------------------------------------------------------------------- actions

    def open_clip(self, request: OpenClip) -> Clip:
        if (request.composite is None) == (request.foreground is None and request.background is None):
            raise ApiError(400, "open either a composite (and its mask) or a foreground and a background")
        if request.composite is not None:
            composite = self.upload(request.composite)
            mode = request.mask if request.mask in MASK_MODES[1:] else "file"
            mask = self.upload(request.mask) if mode == "file" else mode
            if mode == "none":
                self.harmonizer.require_discriminator()
            name, used = composite.name, [composite.id] + ([mask.id] if mode == "file" else [])
            source = harmonize_source(composite, mask)
        else:
            if request.foreground is None or request.background is None:
                raise ApiError(400, "a foreground needs a background to be pasted on (and the other way round)")
            fg, bg = self.upload(request.foreground), self.upload(request.background)
            fg_mask = self.upload(request.foreground_mask) if request.foreground_mask else None
            name, mode = fg.name, "pasted"
            used = [fg.id, bg.id] + ([fg_mask.id] if fg_mask else [])
            source = paste_source(fg, fg_mask, bg, position=request.position, scale=request.scale,
                                  length=request.length)
        clip_id = secrets.token_hex(8)
        clip = Clip(clip_id, self.root / "clips" / clip_id, name, source, mode, used)
        clip.prepare = Job("prepare", clip.id, clip.read, total=source.total, cleanup=lambda: self._tidy(clip))
        with self.lock:
            self.clips[clip.id] = clip
        self.jobs.submit(clip.prepare)
        return clip

    def export(self, clip: Clip, settings: Settings) -> Job:
        """Queues the export of the whole clip with `settings`; it replaces the clip's earlier export."""
        harmonizer = self.harmonizer_for(settings)
        if clip.export is not None:
            self._drop(clip, clip.export)
        if settings.two_pass and clip.mask_mode == "pasted":
            raise ApiError(400, "two passes need a composite file: export the pasted clip in one pass, or open the "
                                "exported composite")
        job = Job("export", clip.id, lambda job: clip.run_export(job, harmonizer, settings.two_pass),
                  total=clip.to_json()["total"], download_name=clip.download_name)

        def cleanup() -> None:  # a failed or cancelled export leaves nothing
            shutil.rmtree(clip.export_dir(job), ignore_errors=True)
            self._tidy(clip)

        job.cleanup = cleanup
        clip.export = job
        return self.jobs.submit(job)

    def _drop(self, clip: Clip, job: Job) -> None:
        """Cancels `job` and removes its files (a finished export's; a running one's go when it stops)."""
        self.jobs.forget(job)
        if job.status in ("done", "failed", "cancelled"):
            shutil.rmtree(clip.export_dir(job), ignore_errors=True)

    def _tidy(self, clip: Clip) -> None:
        """Removes a closed clip's files once its last job has stopped writing them."""
        with self.lock:
            closed = clip.id not in self.clips
        if closed:
            clip.remove()

    def close_clip(self, clip: Clip) -> None:
        with self.lock:
            self.clips.pop(clip.id, None)
        for job in self.jobs.of_clip(clip.id):
            self.jobs.forget(job)
        clip.remove()  # again by a running job's cleanup, once it has stopped

    def remove_upload(self, upload_id: str) -> None:
        upload = self.upload(upload_id)
        with self.lock:
            users = [c.name for c in self.clips.values() if upload.id in c.uploads]
        if users:
            raise ApiError(409, f"{upload.name}: still used by the open clip {users[0]}; close it first")
        self.uploads.remove(upload.id)


def _png(pixels: np.ndarray) -> Response:
    """uint8 RGB (H, W, 3), or float32 (H, W) in [0, 1] as 8-bit gray, as a PNG (lossless, so that the page compares
    exact pixels). zlib's Huffman-only strategy: 19 ms at 854x480 where level 1 takes 35, for the same size."""
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    else:
        pixels = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    _, data = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                            cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY])
    # The URL names an immutable picture: the clip and frame by id, the settings in the query.
    return Response(data.tobytes(), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


# --------------------------------------------------------------------------------------------------- routes

router = APIRouter()


def _server(request: Request) -> Server:
    return request.app.state.server


Srv = Annotated[Server, Depends(_server)]


@router.get("/", include_in_schema=False)
def index():
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/api/info")
def info(server: Srv):
    return server.info()


@router.post("/api/uploads", status_code=201)
async def upload(request: Request, server: Srv):
    """One file, streamed to disk as it arrives (multipart/form-data, field `file`)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > server.max_upload + MULTIPART_SLACK:
        raise server.uploads.too_large("this upload")
    receiver = server.uploads.receiver(request.headers.get("content-type", ""))
    try:
        async for chunk in request.stream():
            receiver.write(chunk)
    except BaseException:
        receiver.abort()
        raise
    return (await run_in_threadpool(receiver.finish)).to_json()


@router.delete("/api/uploads/{upload_id}", status_code=204)
def delete_upload(upload_id: str, server: Srv):
    server.remove_upload(upload_id)


@router.post("/api/clips", status_code=201)
def open_clip(request: OpenClip, server: Srv):
    return server.clip_json(server.open_clip(request))


@router.get("/api/clips/{clip_id}")
def clip(clip_id: str, server: Srv):
    return server.clip_json(server.clip(clip_id))


@router.delete("/api/clips/{clip_id}", status_code=204)
def close_clip(clip_id: str, server: Srv):
    server.close_clip(server.clip(clip_id))


@router.get("/api/clips/{clip_id}/frames/{index}/input.png")
def frame_input(clip_id: str, index: int, server: Srv):
    clip = server.clip(clip_id)
    return _png(clip.frame(server.frame_index(clip, index))[0])


@router.get("/api/clips/{clip_id}/frames/{index}/result.png")
def frame_result(clip_id: str, index: int, settings: Annotated[Settings, Query()], server: Srv):
    """The harmonized preview frame; its X-Vharm-Change header says by how much it changed (RMS over the mask used,
    0-255 levels), so that the page can say when the do-no-harm gate left a frame alone."""
    clip = server.clip(clip_id)
    index = server.frame_index(clip, index)
    pred, used = clip.harmonized(index, server.harmonizer_for(settings), settings.two_pass)
    response = _png(pred)
    response.headers["X-Vharm-Change"] = f"{change_levels(clip.frame(index)[0], pred, used):.2f}"
    return response


@router.get("/api/clips/{clip_id}/frames/{index}/mask.png")
def frame_mask(clip_id: str, index: int, server: Srv):
    clip = server.clip(clip_id)
    return _png(clip.mask_used(server.frame_index(clip, index), server.harmonizer))


@router.get("/api/clips/{clip_id}/frames/{index}/dmap.png")
def frame_dmap(clip_id: str, index: int, server: Srv):
    clip = server.clip(clip_id)
    return _png(clip.disharmony(server.frame_index(clip, index), server.harmonizer))


@router.post("/api/clips/{clip_id}/export", status_code=202)
def export(clip_id: str, settings: Settings, server: Srv):
    return server.job_json(server.export(server.clip(clip_id), settings))


@router.get("/api/jobs/{job_id}")
def job(job_id: str, server: Srv):
    return server.job_json(server.job(job_id))


@router.delete("/api/jobs/{job_id}")
def cancel_job(job_id: str, server: Srv):
    job = server.job(job_id)
    job.cancel()
    return server.job_json(job)


@router.get("/api/jobs/{job_id}/download")
def download(job_id: str, server: Srv):
    job = server.job(job_id)
    if job.result is None or not job.result.is_file():
        raise ApiError(409, f"job {job_id}: nothing to download (it is {job.status})")
    media = "image/png" if job.result.suffix == ".png" else "video/mp4"
    return FileResponse(job.result, media_type=media, filename=job.download_name)


async def _api_error(request: Request, e: ApiError):
    return JSONResponse({"error": _server(request).text(str(e))}, status_code=e.status)


async def _vharm_error(request: Request, e: VharmError):
    status = 413 if isinstance(e, TooLarge) else 400
    return JSONResponse({"error": _server(request).text(str(e))}, status_code=status)


async def _bad_request(request: Request, e: RequestValidationError):
    problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}" for err in e.errors())
    return JSONResponse({"error": problems}, status_code=422)


def create_app(harmonizer: Harmonizer, *, max_upload: int = DEFAULT_MAX_UPLOAD, tempdir: Path | None = None,
               allowed_hosts: Sequence[str] = LOCAL_HOSTS, weights: str = "default") -> FastAPI:
    """The app of `vharm serve`, around one loaded model.

    Args:
        harmonizer: the model; its settings are the page's defaults.
        max_upload: the largest upload (and unpacked zip), bytes.
        tempdir: where its temporary directory goes (default: the system's); removed when the app stops.
        allowed_hosts: the Host headers it answers (["*"]: any, for `--host` other than loopback).
        weights: the weights' name, for the page.
    """
    server = Server(harmonizer, max_upload, tempdir, weights)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start()
        try:
            yield
        finally:
            await run_in_threadpool(server.stop)

    app = FastAPI(title="vharm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(VharmError, _vharm_error)
    app.add_exception_handler(RequestValidationError, _bad_request)
    return app
