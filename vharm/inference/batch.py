"""`vharm batch`: harmonize many videos with N worker processes and a resumable manifest.

The list file has one job per line, `INPUT` or `INPUT<TAB>MASK` (blank lines and `#` comments skipped).
Outputs are `OUTDIR/<input stem>.mp4`; `OUTDIR/manifest.json` records each finished job, so a second run
skips what is done (and redoes a job whose output has disappeared).
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from vharm.errors import VharmError
from vharm.inference.stream import default_threads
from vharm.io.files import atomic_path

_WORKER: dict = {}


def read_jobs(list_file: Path) -> list[tuple[Path, Path | None]]:
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
        jobs.append((Path(parts[0].strip()), Path(parts[1].strip()) if len(parts) == 2 else None))
    if not jobs:
        raise VharmError(f"{list_file}: no jobs in this list")
    stems = [inp.stem for inp, _ in jobs]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise VharmError(f"{list_file}: several inputs named {dup[0]!r} would write the same output")
    return jobs


def _init(weights, device, inference, threads, options):
    import torch

    from vharm.inference.harmonizer import Harmonizer

    torch.set_num_threads(threads)
    _WORKER.update(harmonizer=Harmonizer.from_pretrained(weights, device=device, **inference), options=options)


def _run(job):
    from vharm.inference.stream import harmonize_video

    inp, mask, out = job
    messages = []
    try:
        t = harmonize_video(_WORKER["harmonizer"], inp, mask, out, overwrite=True, warn=messages.append,
                            **_WORKER["options"])
        import torch

        return {"input": str(inp), "output": str(out), "status": "done", "frames": t.frames,
                "seconds": round(t.wall, 2), "threads": torch.get_num_threads(), "warnings": messages}
    except VharmError as e:
        return {"input": str(inp), "output": str(out), "status": "failed", "error": str(e)}


def run_batch(list_file: Path, outdir: Path, weights=None, device: str = "cpu", jobs: int = 1, options=None,
              progress=print, inference=None, threads: int = 0) -> dict:
    """Runs every job of `list_file` not yet done; returns the manifest.

    Each of the `jobs` worker processes gives its network `threads` torch threads (0: `default_threads(jobs)`, so
    that the workers together take half the cores and their decoders and encoders the rest).
    `inference`: keyword arguments of `Harmonizer.from_pretrained` (temporal_smoothing, min_change, full_change;
    None or absent = the weights' settings); `options`: those of `harmonize_video`.
    """
    todo = read_jobs(list_file)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    manifest_path = outdir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"jobs": {}}
    pending = []
    for inp, mask in todo:
        out = outdir / f"{inp.stem}.mp4"
        entry = manifest["jobs"].get(str(inp))
        if entry and entry["status"] == "done" and out.is_file():
            continue
        pending.append((inp, mask, out))
    progress(f"{len(todo) - len(pending)} of {len(todo)} already done; {len(pending)} to run on {jobs} process(es)")
    if pending:
        threads = threads or default_threads(jobs)
        ctx = multiprocessing.get_context("spawn")  # fork after torch started threads can deadlock
        initargs = (weights, device, inference or {}, threads, options or {})
        with ctx.Pool(jobs, initializer=_init, initargs=initargs) as pool:
            for result in pool.imap_unordered(_run, pending):
                manifest["jobs"][result["input"]] = result
                # Written after every job: a kill loses at most the running ones.
                with atomic_path(manifest_path) as tmp:
                    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
                progress(f"{result['status']}: {result['input']} -> {result['output']}"
                         + (f" ({result['error']})" if result["status"] == "failed" else ""))
    return manifest
