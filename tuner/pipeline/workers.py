"""Local team mode: `deepfm tune STUDY --workers N` as N worker processes sharing one study.

The parent process creates the study, its MLflow experiment and parent run once (`init_study`), starts N
`deepfm tune STUDY --workers 1 --no-promote --no-summary` processes over the same storage and tracking URIs
(passed in the environment, so passwords never show in `ps`), forwards Ctrl-C to them, and then re-trains the
finalists (if the study file asks), summarises and promotes once. Each worker is what an independent machine
would run, less the summary (the finalists, the report and the parent run's end state are written once, after
every worker), so local and multi-machine runs behave alike; Optuna's RDB storage is the only coordination
(trials are claimed in the database, heartbeats catch dead workers). `n_trials` is the study's total over all
workers. On a machine with GPUs each worker gets its own, round-robin over the visible ones (CUDA_VISIBLE_DEVICES
set per worker); workers that share one budget their share of its memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Callable

from deepfm_tuner.model.data.tensors import PROCESSES_PER_GPU_ENV
from deepfm_tuner.model.errors import UserInputError
from deepfm_tuner.tuner.pipeline.handle import StudyHandle

STOP_GRACE_SECONDS = 60.0  # after Ctrl-C, how long workers get to close their trial and MLflow run


class WorkersFailed(UserInputError):
    """Every local worker exited with an error; the message carries the first one's last lines."""


def available_cores() -> int:
    """Cores this process may use (cgroup/affinity aware where the OS tells us)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Split the cores between workers: oversubscribed torch threads run several times slower, not faster."""
    return max(1, (cores or available_cores()) // max(1, workers))


def worker_command(study_path: str, *, threads: int, n_trials: int | None = None,
                   timeout: float | None = None) -> list[str]:
    """The command one worker runs (the same `deepfm tune` a remote machine or a compose worker runs)."""
    cmd = [sys.executable, "-m", "deepfm_tuner.tuner.cli", "tune", str(study_path), "--workers", "1", "--no-promote",
           "--no-summary", "--threads", str(threads)]
    if n_trials is not None:
        cmd += ["--n-trials", str(n_trials)]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    return cmd


def cuda_device_count() -> int:
    import torch  # here, not at the top: only a coordinator starting workers asks, once (no CUDA context made)

    return torch.cuda.device_count()


def visible_gpus(environ: Mapping[str, str], device_count: Callable[[], int] = cuda_device_count) -> list[str]:
    """The GPUs this process may hand to its workers: the CUDA_VISIBLE_DEVICES list when it is set (indices or
    UUIDs, as CUDA reads it: up to the first negative entry), else every device CUDA sees."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(device_count())]
    gpus = []
    for entry in (e.strip() for e in listed.split(",")):
        if not entry or entry.startswith("-"):
            break
        gpus.append(entry)
    return gpus


def gpu_env(index: int, workers: int, gpus: list[str]) -> dict[str, str]:
    """Worker `index`'s (0-based) GPU, round-robin over `gpus` (else every worker trains on GPU 0), and how many
    workers share it, so each budgets its share of that device's memory; nothing without a GPU."""
    if not gpus:
        return {}
    slot = index % len(gpus)
    return {"CUDA_VISIBLE_DEVICES": gpus[slot], PROCESSES_PER_GPU_ENV: str(len(range(slot, workers, len(gpus))))}


@dataclass
class Worker:
    index: int
    process: subprocess.Popen
    tail: deque  # the last lines it wrote, for error messages
    pump: threading.Thread


def _pump(stream: IO[bytes], prefix: str, tail: deque, sink: Callable[[str], None] | None) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        tail.append(line)
        if sink is not None and line:
            sink(f"{prefix}{line}")
    stream.close()


def start_workers(handle: StudyHandle, study_path: str, workers: int, threads: int, *, n_trials: int | None,
                  timeout: float | None, echo: Callable[[str], None] | None = None) -> list[Worker]:
    child_env = {**os.environ, "DEEPFM_STORAGE": handle.storage_url,
                 "DEEPFM_TRACKING_URI": handle.tracking_uri, "PYTHONUNBUFFERED": "1"}
    gpus = visible_gpus(os.environ, cuda_device_count)
    started = []
    for index in range(1, workers + 1):
        proc = subprocess.Popen(worker_command(study_path, threads=threads, n_trials=n_trials, timeout=timeout),
                                env={**child_env, **gpu_env(index - 1, workers, gpus)}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)  # our Ctrl-C is forwarded once
        tail: deque = deque(maxlen=40)
        pump = threading.Thread(target=_pump, args=(proc.stderr, f"[worker {index}] ", tail, echo), daemon=True)
        pump.start()
        started.append(Worker(index, proc, tail, pump))
    return started


def _signal_all(workers: list[Worker], sig: int) -> None:
    for w in workers:
        if w.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(w.process.pid, sig)


def stop_workers(workers: list[Worker], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGINT each worker once (each marks its trial failed and closes its MLflow run), SIGKILL stragglers."""
    _signal_all(workers, signal.SIGINT)
    deadline = time.monotonic() + grace
    for w in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.process.wait(timeout=max(0.1, deadline - time.monotonic()))
    _signal_all(workers, signal.SIGKILL)
    for w in workers:
        w.process.wait()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM to the parent (e.g. `kill`, a container stop) stops the workers like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_workers(handle: StudyHandle, workers: int, threads: int, log: Callable[[str], None]) -> None:
    """Run `workers` worker processes on the study until they exit; each line they print goes to `log` with its
    worker's prefix. Ctrl-C (or SIGTERM, see sigterm_as_interrupt) stops them all, each closing its trial's run;
    every worker failing is a WorkersFailed with the first one's last lines."""
    spec = handle.spec
    running: list[Worker] = []
    try:
        running = start_workers(handle, spec.source, workers, threads, n_trials=spec.n_trials, timeout=spec.timeout,
                                echo=log)
        for w in running:
            w.process.wait()
    except BaseException:  # Ctrl-C, SIGTERM, or anything else ending the wait: no worker outlives its coordinator
        stop_workers(running)
        raise
    for w in running:
        w.pump.join(timeout=5)
    failed = [w for w in running if w.process.returncode != 0]
    for w in failed:
        log(f"[worker {w.index}] exited with code {w.process.returncode}")
    if failed and len(failed) == len(running):
        last = "\n".join(list(failed[0].tail)[-8:])
        raise WorkersFailed(f"all {len(running)} workers failed (worker 1 exit code {failed[0].process.returncode});"
                            f" its last lines:\n{last}")
