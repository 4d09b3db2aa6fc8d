"""`vharm batch --ray`: the batch's workers as Ray actors, on a local Ray instance or on a cluster.

Only the scheduling is here: the job list, the manifest (written by the driver after every job), the retries
of a job whose worker died and the progress bar are `vharm.inference.batch.run_batch`'s, as for local runs.

An actor pool rather than Ray Data's `map_batches`: a job is a whole video that a worker streams from and to
shared storage, so there is no data for Ray to move, and the driver has to see every job end, one at a time,
to write the manifest after it and to tell a job whose worker died (retried) from a bad input (recorded).
Each actor is a `batch.Worker` (the model loaded once) holding `cpus_per_job` CPUs, or also `gpus_per_job`
GPUs (its network then runs on CUDA); there are as many as the cluster holds when the batch starts (at most
one per job, and at most `jobs` with `--jobs`). Ray restarts no actor and retries no task by itself: a dead
actor is replaced by a new one and its job is handed to `batch`'s retry rule.
"""

from __future__ import annotations

import dataclasses
import os
import socket

from vharm.errors import VharmError
from vharm.inference.batch import Died, Pool, Worker, WorkerSetup

INSTALL = "pip install 'vharm[ray]'"


def import_ray():
    """The `ray` module, or a one-line error that says how to install it."""
    try:
        import ray
    except ModuleNotFoundError as e:
        if e.name != "ray":
            raise
        raise VharmError(f"--ray: Ray is not installed ({INSTALL})") from None
    return ray


class RayPool(Pool):
    """`batch.Worker` actors on the Ray instance this process is connected to, or else on the one at `address`
    (default: $RAY_ADDRESS, else a new local instance sized to this machine, shut down at the end; "auto": the
    cluster this node has joined)."""

    def __init__(self, setup: WorkerSetup, most: int, address: str | None = None, cpus_per_job: float = 2.0,
                 gpus_per_job: float = 0.0):
        self._ray = ray = import_ray()
        self._started = not ray.is_initialized()
        if self._started:
            _connect(ray, address)
        try:
            size = min(most, _capacity(ray.cluster_resources(), cpus_per_job, gpus_per_job))
        except VharmError:
            self._shutdown()
            raise
        # The network takes half the CPUs a job is given and decoding and encoding the rest, as `default_threads`
        # shares a machine between local processes.
        self._setup = dataclasses.replace(setup, threads=setup.threads or max(1, int(cpus_per_job) // 2),
                                          device="cuda" if gpus_per_job else setup.device)
        self._actor = ray.remote(Worker).options(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_restarts=0,
                                                 max_task_retries=0)
        gpus = f" and {gpus_per_job:g} GPU(s)" if gpus_per_job else ""
        self.describe = f"{size} Ray worker(s) of {cpus_per_job:g} CPU(s){gpus}"
        super().__init__(size)

    def _start(self):
        return self._actor.remote(self._setup)

    def _send(self, worker, job):
        return worker.run.remote(job)

    def _ready(self, tickets, timeout):
        return self._ray.wait(tickets, num_returns=1, timeout=timeout)[0]

    def _collect(self, ticket, worker):
        try:
            return self._ray.get(ticket)
        except self._ray.exceptions.RayActorError as e:
            # Dead, or unreachable for now (ActorUnavailableError): either way its job runs elsewhere.
            self._ray.kill(worker)
            return Died(_reason(e))

    def _stop(self, workers) -> None:
        for worker in workers:
            self._ray.kill(worker)
        self._shutdown()

    def _shutdown(self) -> None:
        if self._started:
            self._ray.shutdown()


def _connect(ray, address: str | None) -> None:
    where = address or os.environ.get("RAY_ADDRESS", "")
    _check_reachable(where)
    try:
        # No address: a new instance ("local"), not Ray's guess of this node's cluster, which a crashed `ray start`
        # leaves pointing at nothing ("auto" asks for the guess). Workers print nothing worth a line here
        # (warnings go to the manifest); Ray keeps their logs in its session directory.
        ray.init(address=where or "local", include_dashboard=False, log_to_driver=False)
    except ConnectionError as e:
        # Ray sends its token to a cluster named by address only when told to; without it the refusal reads as
        # any other failure to connect.
        hint = "; a cluster with token authentication also needs RAY_AUTH_MODE=token" \
            if where and not os.environ.get("RAY_AUTH_MODE") else ""
        raise VharmError(f"--ray {where}: cannot connect to a Ray cluster ({' '.join(str(e).split())}{hint})") \
            from None


def _check_reachable(where: str) -> None:
    """ray.init retries an address where nothing listens without end (printing a warning every few seconds): a
    plain TCP connection tells at once."""
    host, _, port = where.removeprefix("ray://").rpartition(":")
    if not port.isdigit():  # no address, "auto", "local": Ray's own lookups
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise VharmError(f"--ray {where}: nothing answers there ({e.strerror or e})") from None


def _capacity(resources: dict, cpus_per_job: float, gpus_per_job: float) -> int:
    """How many jobs the cluster runs at once."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    size = int(cpus // cpus_per_job)
    if gpus_per_job:
        size = min(size, int(gpus // gpus_per_job))
    if size < 1:
        raise VharmError(f"--cpus-per-job {cpus_per_job:g} --gpus-per-job {gpus_per_job:g}: the Ray cluster has "
                         f"{cpus:g} CPU(s) and {gpus:g} GPU(s), too few for one job")
    return size


def _reason(error) -> str:
    """One line from Ray's account of an actor's death: what happened, and on which node and process."""
    lines = str(error).splitlines()
    fields = dict(line.strip().split(": ", 1) for line in lines[1:] if line.startswith("\t") and ": " in line)
    what = " ".join(line for line in lines if not line.startswith("\t"))
    what = what.split(" Some common causes")[0]  # Ray's general advice, the same for every death
    where = ", ".join(f"{k} {fields[k]}" for k in ("ip", "pid") if k in fields)
    return f"{what} ({where})" if where else what
