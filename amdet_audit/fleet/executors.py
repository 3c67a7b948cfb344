"""Where fleet tasks run: in this process, in local worker processes (``--jobs N``), or as Ray tasks (``--ray``,
a local Ray runtime or an existing cluster by address). Each executor takes task specs and hands back records
as tasks finish, in whatever order they finish.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from amdet_audit.errors import UsageError
from amdet_audit.fleet.task import run_task

Spec = dict[str, Any]
Record = dict[str, Any]


class Executor(Protocol):
    """Runs task specs; ``capacity`` tasks at most are handed to it at once."""

    capacity: int
    description: str

    def submit(self, spec: Spec) -> object:
        """Start one task; return its handle."""

    def next_done(self, handles: list[object]) -> tuple[object, Record]:
        """Wait for one of ``handles`` to finish; return it and its record."""

    def close(self, cancel: bool = False) -> None:
        """Release the workers (``cancel``: drop tasks not started)."""


class InProcess:
    """One task at a time, in this process (``--jobs 1``)."""

    def __init__(self, task: Callable[[Spec], Record] = run_task) -> None:
        self.capacity, self.description, self.task = 1, "in this process", task
        self.results: dict[int, Record] = {}

    def submit(self, spec: Spec) -> object:
        handle = len(self.results)
        self.results[handle] = self.task(spec)
        return handle

    def next_done(self, handles: list[object]) -> tuple[object, Record]:
        handle = handles[0]
        return handle, self.results.pop(handle)  # type: ignore[call-overload]

    def close(self, cancel: bool = False) -> None:
        self.results.clear()


class LocalProcesses:
    """``jobs`` worker processes on this machine (spawned: no state shared with the driver)."""

    def __init__(self, jobs: int) -> None:
        import multiprocessing

        self.capacity, self.description = jobs, f"{jobs} local worker processes"
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, spec: Spec) -> object:
        return self.pool.submit(run_task, spec)

    def next_done(self, handles: list[object]) -> tuple[object, Record]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)  # type: ignore[arg-type]
        future: Future = next(iter(done))
        try:
            return future, future.result()
        except Exception as err:  # the worker process died (killed, out of memory): that target's error
            return future, {"status": "error", "exit_code": 2, "label": "inconclusive",
                            "error": f"worker process failed: {type(err).__name__}: {err}"[:2000]}

    def close(self, cancel: bool = False) -> None:
        self.pool.shutdown(wait=not cancel, cancel_futures=cancel)


class RayTasks:
    """One Ray task per target, each reserving ``cpus`` CPUs and ``gpus`` GPUs: on a local Ray runtime
    (``address`` None) or on the cluster at ``address``."""

    def __init__(self, address: str | None, cpus: float, gpus: float) -> None:
        try:
            import ray
        except ImportError as err:
            raise UsageError("--ray needs Ray: pip install 'amdet-audit[ray]'") from err
        if cpus <= 0 or gpus < 0:
            raise UsageError("--scan-cpus must be above 0 and --scan-gpus at least 0")
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("AMDET_AUDIT_", "HF_"))}}
            try:
                if address:
                    ray.init(address=address, runtime_env=env, log_to_driver=False)
                else:
                    ray.init(num_cpus=max(1, os.cpu_count() or 1), runtime_env=env, log_to_driver=False,
                             include_dashboard=False)
            except Exception as err:  # a cluster that cannot be reached is bad input, in one line
                raise UsageError(f"--ray {address or '(local)'}: cannot start or reach Ray: {err}"[:400]) from err
        total = ray.cluster_resources()
        slots = int(total.get("CPU", 1) // cpus)
        if gpus:
            slots = min(slots, int(total.get("GPU", 0) // gpus))
        if slots < 1:
            raise UsageError(f"the Ray cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs: "
                             f"not enough for one scan with --scan-cpus {cpus:g} --scan-gpus {gpus:g}")
        self.capacity = slots
        where = address or "a local Ray runtime"
        self.description = f"Ray ({where}; {slots} scans at a time, {cpus:g} CPUs and {gpus:g} GPUs each)"
        self.remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_task)

    def submit(self, spec: Spec) -> object:
        return self.remote.remote(spec)

    def next_done(self, handles: list[object]) -> tuple[object, Record]:
        done, _ = self.ray.wait(handles, num_returns=1)
        handle = done[0]
        try:
            return handle, self.ray.get(handle)
        except Exception as err:  # the task's worker died: that target's error
            return handle, {"status": "error", "exit_code": 2, "label": "inconclusive",
                            "error": f"Ray task failed: {type(err).__name__}: {str(err)[:1500]}"}

    def close(self, cancel: bool = False) -> None:
        if self.started_here:
            self.ray.shutdown()


def make_executor(jobs: int, ray: str | None, cpus: float, gpus: float) -> Executor:
    """The executor the options ask for: Ray when ``ray`` is given ("local" or an address), else ``jobs``
    local processes (one: this process)."""
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    if ray is not None:
        return RayTasks(None if ray == "local" else ray, cpus, gpus)
    return InProcess() if jobs == 1 else LocalProcesses(jobs)
