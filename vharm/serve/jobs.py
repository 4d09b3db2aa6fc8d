"""The long jobs of `vharm serve` (reading a clip for the preview, exporting it), run one at a time in one
background worker thread, in the order they were asked for: the server holds one model, and on a CPU two videos at
once would each go at half the speed. The page polls a job for its progress; cancelling a job stops it at its next
frame (`Job.progress` raises `Cancelled`), as stopping the server does.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vharm.errors import VharmError


class Cancelled(Exception):
    """Raised in a job's thread when it was cancelled: what it was writing is removed, as for any error."""


@dataclass
class Job:
    """One long job: `run(job)` does the work, calling `job.progress(n)` after each frame, and returns the file the
    page may download (or None); `cleanup()` runs when the job ends in any way but done.

    Attributes:
        kind: "prepare" (read a clip for the preview) or "export" (harmonize the whole video).
        clip: the id of the clip it works on.
        total: the frames it will do, when known; done: the frames done.
        status: "queued", "running", "done", "failed" or "cancelled".
        error: the one-line message of a failed job; warnings: those its run gave.
        result: the file to download (an export), download_name: the name to offer it under.
    """

    kind: str
    clip: str
    run: Callable[[Job], Path | None]
    total: int | None = None
    download_name: str | None = None
    cleanup: Callable[[], None] = lambda: None
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    done: int = 0
    status: str = "queued"
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    result: Path | None = None
    started: float | None = None  # time.monotonic() seconds
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def progress(self, done: int) -> None:
        """Records `done` frames; raises `Cancelled` once the job was cancelled."""
        self.done = done
        if self._cancel.is_set():
            raise Cancelled

    def cancel(self) -> None:
        """Stops the job at its next frame; a queued one never starts."""
        self._cancel.set()
        if self.status == "queued":
            self.status = "cancelled"

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def to_json(self, ahead: int = 0) -> dict:
        """What the page shows: progress, frames per second while running, jobs queued before this one."""
        end = self.finished or time.monotonic()
        seconds = end - self.started if self.started is not None else 0.0
        return {"id": self.id, "kind": self.kind, "clip": self.clip, "status": self.status, "done": self.done,
                "total": self.total, "ahead": ahead, "seconds": round(seconds, 2),
                "fps": round(self.done / seconds, 1) if seconds > 0 else None, "error": self.error,
                "warnings": self.warnings, "download": self.download_name if self.result is not None else None}


class JobQueue:
    """Jobs run one at a time, in order, in one worker thread."""

    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._waiting: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="vharm-serve-jobs", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
        self._waiting.put(job)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def ahead(self, job: Job) -> int:
        """How many jobs run before `job` starts (the running one included)."""
        if job.status != "queued":
            return 0
        with self._lock:
            jobs = list(self._jobs.values())
        earlier = jobs[:jobs.index(job)]
        return sum(j.status in ("queued", "running") for j in earlier)

    def of_clip(self, clip_id: str) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.clip == clip_id]

    def forget(self, job: Job) -> None:
        """Cancels `job` if it has not ended and drops it from the list."""
        job.cancel()
        with self._lock:
            self._jobs.pop(job.id, None)

    def close(self, timeout: float = 30.0) -> None:
        """Cancels every job and waits (up to `timeout` seconds) for the running one to stop."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        self._waiting.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while (job := self._waiting.get()) is not None:
            if job.cancelled:
                job.status = "cancelled"
                job.cleanup()
                continue
            job.status, job.started = "running", time.monotonic()
            try:
                job.result = job.run(job)
                job.status = "done"
            except Cancelled:
                job.status = "cancelled"
            except VharmError as e:
                job.status, job.error = "failed", str(e)
            except Exception as e:  # noqa: BLE001 - the worker outlives any one job; the page shows the message
                job.status, job.error = "failed", f"internal error: {type(e).__name__}: {e}"
            finally:
                job.finished = time.monotonic()
            if job.status != "done":
                job.cleanup()
