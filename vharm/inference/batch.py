"""`vharm batch`: harmonize many videos with a pool of workers and a resumable manifest.

The list file has one job per line, `INPUT` or `INPUT<TAB>MASK` (blank lines and `#` comments skipped).
Outputs are `OUTDIR/<input stem>.mp4`; `OUTDIR/manifest.json` records each finished job, so a second run
skips what is done (and redoes a job whose output has disappeared).

Two pools run the jobs, each worker holding one model loaded once and running one job at a time: local worker
processes (`LocalPool`, `--jobs N`) and Ray actors (`vharm.inference.ray_batch.RayPool`, `--ray`). Only the
scheduling is theirs; the job list, the manifest, the per-job record, the retries of a job whose worker died and
the progress bar are `run_batch`'s, the same for both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import signal
import time
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing import connection
from pathlib import Path

import torch
from tqdm import tqdm

from vharm.errors import VharmError
from vharm.inference.harmonizer import Harmonizer
from vharm.inference.stream import default_threads, harmonize_video
from vharm.io.files import atomic_path

# Tests kill a worker in the middle of a job: a file named like an input in this folder makes the worker that
# starts that input's job delete the file and die by SIGKILL, as the kernel's OOM killer would end it.
KILL_DIR_ENV = "VHARM_TEST_KILL_DIR"


@dataclass(frozen=True)
class Job:
    """One line of the list file; `input` as written there names the job in the manifest."""

    input: Path
    mask: Path | None
    output: Path

    def resolved(self) -> Job:
        """The paths made absolute here, for workers whose working directory is another (Ray's, other nodes')."""
        return Job(self.input.absolute(), None if self.mask is None else self.mask.absolute(), self.output.absolute())


def read_jobs(list_file: Path, outdir: Path) -> list[Job]:
    try:
        lines = Path(list_file).read_text().splitlines()
    except FileNotFoundError:
        raise VharmError(f"{list_file}: no such list file") from None
    except UnicodeDecodeError:
        raise VharmError(f"{list_file}: not a text file (one INPUT or INPUT<TAB>MASK per line)") from None
    jobs = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) > 2:
            raise VharmError(f"{list_file}:{n}: expected INPUT or INPUT<TAB>MASK, got {len(parts)} fields")
        inp = Path(parts[0].strip())
        jobs.append(Job(inp, Path(parts[1].strip()) if len(parts) == 2 else None, Path(outdir) / f"{inp.stem}.mp4"))
    if not jobs:
        raise VharmError(f"{list_file}: no jobs in this list")
    stems = [job.input.stem for job in jobs]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise VharmError(f"{list_file}: several inputs named {dup[0]!r} would write the same output")
    return jobs


class Manifest:
    """OUTDIR/manifest.json, the one record of what is done: rewritten whole and atomically after every job, so
    that a driver killed at any moment loses at most the jobs that were running."""

    def __init__(self, outdir: Path):
        self.path = Path(outdir) / "manifest.json"
        try:
            self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"jobs": {}}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VharmError(f"{self.path}: not a readable manifest ({e}); move it away to start afresh") from None
        if not isinstance(self.data, dict) or not isinstance(self.data.get("jobs"), dict):
            raise VharmError(f"{self.path}: not a vharm batch manifest (no \"jobs\" object)")

    def pending(self, jobs: list[Job]) -> list[Job]:
        """The jobs not done, or done but whose output has disappeared since."""
        done = {key for key, entry in self.data["jobs"].items() if entry.get("status") == "done"}
        return [job for job in jobs if str(job.input) not in done or not job.output.is_file()]

    def record(self, job: Job, outcome: dict) -> dict:
        entry = {"input": str(job.input), "output": str(job.output), **outcome}
        self.data["jobs"][entry["input"]] = entry
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        return entry


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker loads once: the model (`inference`: keyword arguments of `Harmonizer.from_pretrained`) on
    `device` with `threads` torch threads (0: the pool's default), and `options` of `harmonize_video`."""

    weights: str | Path | None
    device: str
    inference: dict
    threads: int
    options: dict


class Worker:
    """One model, loaded once, that runs jobs one at a time: in a local worker process or as a Ray actor."""

    def __init__(self, setup: WorkerSetup):
        torch.set_num_threads(setup.threads)
        self.harmonizer = Harmonizer.from_pretrained(setup.weights, device=setup.device, **setup.inference)
        self.options = setup.options

    def run(self, job: Job) -> dict:
        """Harmonizes one job into its output (written under a temporary name, renamed when complete); returns
        the outcome for the manifest. A bad input is a failed outcome, never an exception: the batch goes on."""
        _maybe_killed(job)
        messages: list[str] = []
        try:
            t = harmonize_video(self.harmonizer, job.input, job.mask, job.output, overwrite=True,
                                warn=messages.append, **self.options)
        except VharmError as e:
            return {"status": "failed", "error": str(e)}
        except Exception as e:  # noqa: BLE001 - a library's error on one file must not stop the others
            return {"status": "failed", "error": " ".join(f"internal error: {type(e).__name__}: {e}".split())}
        return {"status": "done", "frames": t.frames, "seconds": round(t.wall, 2),
                "threads": torch.get_num_threads(), "warnings": messages}


def _maybe_killed(job: Job) -> None:
    folder = os.environ.get(KILL_DIR_ENV)
    if folder:
        try:
            (Path(folder) / job.input.name).unlink()
        except FileNotFoundError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Died:
    """The worker died while it held the job (killed, out of memory, its node lost): the job may be retried."""

    reason: str


class Pool:
    """Workers that run one job each at a time. A subclass starts a worker (`_start`), hands it a job and returns
    a ticket for it (`_send`), says which tickets are ready (`_ready`), and returns a ticket's outcome dict, or a
    `Died` after which the worker is replaced (`_collect`); `_stop` ends the workers given."""

    describe = ""

    def __init__(self, size: int):
        self._idle = [self._start() for _ in range(size)]
        self._busy: dict = {}  # ticket -> (worker, job)

    @property
    def idle(self) -> bool:
        return bool(self._idle)

    @property
    def running(self) -> int:
        return len(self._busy)

    def submit(self, job: Job) -> None:
        worker = self._idle.pop()
        self._busy[self._send(worker, job.resolved())] = (worker, job)

    def finished(self, timeout: float) -> list[tuple[Job, dict | Died]]:
        """The jobs that ended within `timeout` seconds, with their outcomes."""
        ended = []
        for ticket in self._ready(list(self._busy), timeout):
            worker, job = self._busy.pop(ticket)
            outcome = self._collect(ticket, worker)
            self._idle.append(self._start() if isinstance(outcome, Died) else worker)
            ended.append((job, outcome))
        return ended

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        # Also on an interrupted batch: the running jobs are lost, their outputs never renamed into place.
        self._stop([*self._idle, *(worker for worker, _ in self._busy.values())])


class LocalPool(Pool):
    """Worker processes on this machine, each fed one job at a time through its own pipe, so that the driver
    knows which job a dead process held. Spawned: forking after torch started its threads can deadlock."""

    def __init__(self, setup: WorkerSetup, size: int):
        self._ctx = multiprocessing.get_context("spawn")
        self._setup = dataclasses.replace(setup, threads=setup.threads or default_threads(size))
        self.describe = f"{size} process(es)"
        super().__init__(size)

    def _start(self):
        here, there = self._ctx.Pipe()
        process = self._ctx.Process(target=_serve, args=(there, self._setup), daemon=True)
        process.start()
        there.close()  # the process holds the only other end: `here` reads end-of-file once it dies
        return process, here

    def _send(self, worker, job):
        with contextlib.suppress(BrokenPipeError):  # a process that died while idle: `_collect` reports it
            worker[1].send(job)
        return worker

    def _ready(self, tickets, timeout):
        ready = set(connection.wait([w for t in tickets for w in (t[1], t[0].sentinel)], timeout))
        return [t for t in tickets if t[1] in ready or t[0].sentinel in ready]

    def _collect(self, ticket, worker):
        process, pipe = worker
        try:
            return pipe.recv()  # also from a process that has ended since: what it sent is there
        except EOFError:
            process.join()
            pipe.close()
            code = process.exitcode
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            return Died(f"the worker process (pid {process.pid}) {how}")

    def _stop(self, workers) -> None:
        for process, _ in workers:
            process.terminate()
        for process, pipe in workers:
            process.join()
            pipe.close()


def _serve(pipe, setup: WorkerSetup) -> None:
    """A local worker process: loads the model, then runs each job it is sent until the driver goes away.

    Ctrl-C reaches the whole process group: the driver reports it, its workers end without a traceback each (a
    running job's temporary output removed as `harmonize_video` unwinds)."""
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        worker = Worker(setup)
        while True:
            pipe.send(worker.run(pipe.recv()))


class _Bar:
    """One progress bar over the whole batch: jobs ended of those to run; done, failed, running; frames/s over
    all workers (the frames of the jobs done since the start)."""

    def __init__(self, total: int, show: bool):
        self._bar = tqdm(total=total, unit="job", disable=not show, dynamic_ncols=True)
        self._start = time.perf_counter()
        self.done = self.failed = self.frames = 0

    def update(self, running: int, entry: dict | None = None) -> None:
        if entry is not None:
            self._bar.update(1)
            if entry["status"] == "done":
                self.done += 1
                self.frames += entry["frames"]
            else:
                self.failed += 1
        fps = self.frames / max(time.perf_counter() - self._start, 1e-6)
        self._bar.set_postfix_str(f"done {self.done}, failed {self.failed}, running {running}, {fps:.1f} frames/s")

    def close(self) -> None:
        self._bar.close()


def _schedule(pool: Pool, pending: list[Job], manifest: Manifest, retries: int, progress, bar: _Bar) -> None:
    """Keeps every worker busy until all jobs have ended; a job whose worker died runs again, first, up to
    `retries` times, and is then recorded as failed with the reason."""
    queue = deque(pending)
    runs: Counter = Counter()  # every run of a job but its last ended with its worker's death
    while queue or pool.running:
        while queue and pool.idle:
            pool.submit(queue.popleft())
        bar.update(pool.running)
        for job, outcome in pool.finished(timeout=1.0):
            runs[job] += 1
            if isinstance(outcome, Died):
                if runs[job] <= retries:
                    progress(f"retrying: {job.input} ({outcome.reason})")
                    queue.appendleft(job)
                    continue
                outcome = {"status": "failed", "error": f"its worker died on each of {runs[job]} attempt(s) "
                                                        f"(--retries {retries}); last: {outcome.reason}"}
            entry = manifest.record(job, {**outcome, "attempts": runs[job]})
            bar.update(pool.running, entry)
            progress(f"{entry['status']}: {entry['input']} -> {entry['output']}"
                     + (f" ({entry['error']})" if entry["status"] == "failed" else ""))


def run_batch(list_file: Path, outdir: Path, weights=None, device: str = "cpu", jobs: int | None = None,
              options=None, progress=print, inference=None, threads: int = 0, retries: int = 2, ray: dict | None = None,
              bar: bool = False) -> dict:
    """Runs every job of `list_file` not yet done; returns the manifest.

    Locally (`ray` None) on `jobs` worker processes (default 1), each giving its network `threads` torch threads
    (0: `default_threads(processes)`, so that the workers together take half the cores and their decoders and
    encoders the rest). `ray`: run on Ray instead, with the keyword arguments of
    `vharm.inference.ray_batch.RayPool` (address, cpus_per_job, gpus_per_job; {} for the defaults), `jobs` then
    capping the number of workers. A job whose worker dies is run again up to `retries` times.
    `inference`: keyword arguments of `Harmonizer.from_pretrained` (temporal_smoothing, min_change, full_change,
    strength; None or absent = the weights' settings); `options`: those of `harmonize_video`. `progress` receives a
    line per job; `bar` shows one progress bar for the batch.
    """
    todo = read_jobs(list_file, outdir)
    Path(outdir).mkdir(parents=True, exist_ok=True)
    manifest = Manifest(outdir)
    pending = manifest.pending(todo)
    summary = f"{len(todo) - len(pending)} of {len(todo)} already done; {len(pending)} to run"
    if not pending:
        progress(summary)
        return manifest.data
    setup = WorkerSetup(weights, device, inference or {}, threads, options or {})
    # Never more workers than jobs; a Ray pool also stops at what its cluster holds.
    most = min(jobs or (1 if ray is None else len(pending)), len(pending))
    if ray is None:
        pool = LocalPool(setup, most)
    else:
        from vharm.inference.ray_batch import RayPool

        pool = RayPool(setup, most, **ray)
    with pool:
        progress(f"{summary} on {pool.describe}")
        status = _Bar(len(pending), bar)
        try:
            _schedule(pool, pending, manifest, retries, progress, status)
        finally:
            status.close()
    return manifest.data
