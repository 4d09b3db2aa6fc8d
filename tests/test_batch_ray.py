"""`vharm batch --ray` on a local Ray instance of 2 CPUs: the frames and manifest of a local run, a worker killed
in the middle of a job retried (or recorded), a bad input recorded, an interrupted batch resumed; and the worker
deaths of the local pool, handled by the same rule."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import VIDEO_FRAMES, VIDEO_H, VIDEO_W, read_video, scene, write_video

from vharm.inference.batch import KILL_DIR_ENV, run_batch

NAMES = ("a", "b", "c")


@pytest.fixture(scope="session")
def kill_dir(tmp_path_factory) -> Path:
    """A file named like an input here kills the worker that starts its job (`batch.KILL_DIR_ENV`)."""
    return tmp_path_factory.mktemp("kill")


@pytest.fixture(scope="session")
def ray_instance(kill_dir):
    """One small local Ray instance for the session; `vharm batch --ray` uses it rather than starting its own."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {KILL_DIR_ENV: str(kill_dir)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Path:
    """Three tiny generated clips a, b, c (other scenes, other seeds) with mask videos, and jobs.txt listing them."""
    root = tmp_path_factory.mktemp("clips")
    lines = []
    for i, name in enumerate(NAMES):
        frames = [scene(VIDEO_H, VIDEO_W, t + 3 * i, rng_seed=i) for t in range(VIDEO_FRAMES)]
        comp = write_video(root / f"{name}.mp4", [rgb for rgb, _ in frames])
        mask = write_video(root / f"{name}-mask.mp4", [m for _, m in frames])
        lines.append(f"{comp}\t{mask}")
    (root / "jobs.txt").write_text("\n".join(lines) + "\n")
    return root


def manifest_of(outdir: Path) -> dict:
    return {Path(k).stem: v for k, v in json.loads((outdir / "manifest.json").read_text())["jobs"].items()}


def test_ray_gives_the_frames_and_manifest_of_a_local_run(ray_instance, run_cli, weights_dir, clips, tmp_path):
    runs = {"local": ("--jobs", "1"), "ray": ("--ray", "--cpus-per-job", "1")}
    for name, flags in runs.items():
        code, stdout, err = run_cli("batch", clips / "jobs.txt", "-o", tmp_path / name, "--weights", weights_dir,
                                    *flags)
        assert code == 0, err
        assert "3 done, 0 failed" in stdout
    assert "0 of 3 already done; 3 to run on 2 Ray worker(s) of 1 CPU(s)" in stdout
    local, ray = manifest_of(tmp_path / "local"), manifest_of(tmp_path / "ray")
    for stem in NAMES:
        assert ray[stem].keys() == local[stem].keys()
        for key in ("status", "frames", "threads", "warnings", "attempts"):
            assert ray[stem][key] == local[stem][key], key
        expected = read_video(tmp_path / "local" / f"{stem}.mp4")[0]
        got = read_video(tmp_path / "ray" / f"{stem}.mp4")[0]
        assert len(got) == len(expected) == VIDEO_FRAMES
        assert all(np.array_equal(g, e) for g, e in zip(got, expected)), stem


def test_ray_retries_the_job_of_a_killed_worker(ray_instance, run_cli, weights_dir, clips, kill_dir, tmp_path):
    (kill_dir / "b.mp4").touch()
    code, stdout, err = run_cli("batch", clips / "jobs.txt", "-o", tmp_path / "out", "--weights", weights_dir,
                                "--ray", "--cpus-per-job", "1")
    assert code == 0, err
    assert not (kill_dir / "b.mp4").exists()  # the worker did die
    assert "retrying: " in stdout and "b.mp4 (The actor died" in stdout and "3 done, 0 failed" in stdout
    manifest = manifest_of(tmp_path / "out")
    assert [manifest[s]["attempts"] for s in NAMES] == [1, 2, 1]
    assert len(read_video(tmp_path / "out" / "b.mp4")[0]) == VIDEO_FRAMES


def test_ray_records_a_dead_worker_and_a_bad_input_and_runs_the_rest(ray_instance, run_cli, weights_dir, clips,
                                                                    kill_dir, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    lines = (clips / "jobs.txt").read_text().splitlines()
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("\n".join([lines[0], lines[1], f"{bad}\t{clips / 'a-mask.mp4'}", lines[2]]) + "\n")
    (kill_dir / "b.mp4").touch()
    code, stdout, err = run_cli("batch", jobs, "-o", tmp_path / "out", "--weights", weights_dir, "--ray",
                                "--cpus-per-job", "1", "--retries", "0")
    assert code == 2 and "2 done, 2 failed" in stdout
    assert err.strip().splitlines()[-1].startswith("vharm: error: ") and "(and 1 more failed)" in err
    manifest = manifest_of(tmp_path / "out")
    assert [manifest[s]["status"] for s in ("a", "b", "bad", "c")] == ["done", "failed", "failed", "done"]
    assert manifest["b"]["error"].startswith("its worker died on each of 1 attempt(s) (--retries 0); last: The "
                                             "actor died") and manifest["b"]["attempts"] == 1
    assert not (tmp_path / "out" / "b.mp4").exists() and not (tmp_path / "out" / "bad.mp4").exists()
    # The bad input's record is the one line `vharm harmonize` prints for it.
    code, _, err = run_cli("harmonize", bad, "-m", clips / "a-mask.mp4", "-o", tmp_path / "x.mp4", "--weights",
                           weights_dir)
    assert code == 2 and err.strip() == f"vharm: error: {manifest['bad']['error']}"
    assert "bad.mp4: not a readable video" in manifest["bad"]["error"]


class Interrupted(Exception):
    pass


def test_ray_resume_runs_only_what_an_interrupted_batch_left(ray_instance, run_cli, weights_dir, clips, tmp_path):
    out = tmp_path / "out"

    def stop_after_the_first_job(line):
        if line.startswith("done: "):
            raise Interrupted(line)

    # Two workers: the driver stops with one job recorded and another running (lost), one never started.
    with pytest.raises(Interrupted):
        run_batch(clips / "jobs.txt", out, weights_dir, ray={"cpus_per_job": 1}, progress=stop_after_the_first_job)
    (first,) = manifest_of(out).values()
    before = Path(first["output"]).stat().st_mtime_ns
    code, stdout, err = run_cli("batch", clips / "jobs.txt", "-o", out, "--weights", weights_dir, "--ray",
                                "--cpus-per-job", "1")
    assert code == 0, err
    assert "1 of 3 already done; 2 to run" in stdout and "3 done, 0 failed" in stdout
    assert Path(first["output"]).stat().st_mtime_ns == before
    assert {j["status"] for j in manifest_of(out).values()} == {"done"}
    code, stdout, _ = run_cli("batch", clips / "jobs.txt", "-o", out, "--weights", weights_dir, "--ray")
    assert code == 0 and "3 of 3 already done; 0 to run" in stdout


def test_ray_refuses_more_cpus_per_job_than_the_cluster_has(ray_instance, run_cli, weights_dir, clips, tmp_path):
    code, _, err = run_cli("batch", clips / "jobs.txt", "-o", tmp_path / "out", "--weights", weights_dir, "--ray",
                           "--cpus-per-job", "3")
    assert code == 2 and err.strip() == ("vharm: error: --cpus-per-job 3 --gpus-per-job 0: the Ray cluster has 2 "
                                         "CPU(s) and 0 GPU(s), too few for one job")


@pytest.mark.parametrize("flags, message", [
    (("--cpus-per-job", "1"), "--cpus-per-job and --gpus-per-job need --ray"),
    (("--ray", "--cpus-per-job", "0"), "--cpus-per-job must be > 0 and --gpus-per-job >= 0, got 0 and 0"),
    (("--ray", "--device", "cuda"), "--ray --device cuda: give each job a GPU with --gpus-per-job"),
    (("--retries", "-1"), "--jobs must be >= 1, --threads and --retries >= 0"),
])
def test_batch_ray_flags_are_checked_first(run_cli, clips, tmp_path, flags, message):
    code, _, err = run_cli("batch", clips / "jobs.txt", "-o", tmp_path / "out", *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_batch_ray_before_the_list_says_what_it_took(run_cli, clips, tmp_path):
    code, _, err = run_cli("batch", "--ray", clips / "jobs.txt", "-o", tmp_path / "out")
    assert code == 2 and err.strip() == (f"vharm: error: vharm batch: no list file given: --ray took "
                                         f"'{clips / 'jobs.txt'}' as its ADDRESS (give the list first, or "
                                         "--ray=ADDRESS)")


def test_batch_ray_without_ray_says_how_to_install_it(monkeypatch, run_cli, clips, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where Ray is not installed
    code, _, err = run_cli("batch", clips / "jobs.txt", "-o", tmp_path / "out", "--ray")
    assert code == 2 and err.strip() == "vharm: error: --ray: Ray is not installed (pip install 'vharm[ray]')"


def test_local_pool_retries_the_job_of_a_killed_worker_too(monkeypatch, run_cli, weights_dir, clips, tmp_path):
    monkeypatch.setenv(KILL_DIR_ENV, str(tmp_path))  # the spawned worker processes inherit it
    (tmp_path / "a.mp4").touch()
    code, stdout, err = run_cli("batch", clips / "jobs.txt", "-o", tmp_path / "out", "--weights", weights_dir,
                                "--retries", "1")
    assert code == 0, err
    assert "retrying: " in stdout and "a.mp4 (the worker process (pid " in stdout and "killed by signal 9" in stdout
    assert [manifest_of(tmp_path / "out")[s]["attempts"] for s in NAMES] == [2, 1, 1]


def test_ray_address_where_nothing_listens_is_one_line_at_once(ray_instance, monkeypatch, run_cli, weights_dir,
                                                                clips, tmp_path):
    monkeypatch.setattr(ray_instance, "is_initialized", lambda: False)  # as in a new process: vharm connects
    code, _, err = run_cli("batch", clips / "jobs.txt", "-o", tmp_path / "out", "--weights", weights_dir, "--ray",
                           "127.0.0.1:1")
    assert code == 2 and err.strip() == "vharm: error: --ray 127.0.0.1:1: nothing answers there (Connection refused)"
