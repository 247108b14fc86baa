"""A study's life in one function, called the same way by `deepfm tune` in one process, by the coordinator of
local workers (`--workers N`) and by each team worker: stores -> data -> study -> trials -> finalists -> refit ->
reference -> summary -> promotion. The data step runs first and once per data set (later runs map the encoded
dataset, and with data.tune_rows the trials' sample of it); the stores are resolved once, here, and checked before
it, so a wrong URI fails in seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from deepfm_tuner.model.data.tensors import PreparedData
from deepfm_tuner.model.train import EpochMetrics
from deepfm_tuner.tuner.pipeline.handle import StudyHandle, init_study
from deepfm_tuner.tuner.pipeline.loop import latency_probe, run_trials
from deepfm_tuner.tuner.pipeline.promotion import promote_study
from deepfm_tuner.tuner.pipeline.refit import RefitTask, run_refit
from deepfm_tuner.tuner.pipeline.summary import summarise
from deepfm_tuner.tuner.pipeline.workers import (
    WorkersFailed,
    available_cores,
    run_workers,
    sigterm_as_interrupt,
    threads_per_worker,
)
from deepfm_tuner.tuner.spec.study import StudySpec
from deepfm_tuner.tuner.stores.check import check_stores
from deepfm_tuner.tuner.stores.datasets import part_dataset
from deepfm_tuner.tuner.stores.locations import redact, resolve_stores
from deepfm_tuner.tuner.trials import interrupts
from deepfm_tuner.tuner.trials.finalist_runs import run_finalists
from deepfm_tuner.tuner.trials.finalists import FinalistsResult
from deepfm_tuner.tuner.trials.record import best_trial, trial_counts
from deepfm_tuner.tuner.trials.reference import ReferenceResult, check_reference, run_reference


def load_data(spec: StudySpec, log: Callable[[str], None] = lambda message: None) -> PreparedData:
    """The study's encoded dataset, mapped (built on first use: the one expensive data step of a study)."""
    return spec.data.prepare(log)


@dataclass
class TuneResult:
    handle: StudyHandle
    best_trial: optuna.trial.FrozenTrial | None
    counts: dict[str, int] = field(default_factory=dict)
    promotion: Any = None  # tuner.registry.promotion.PromotionResult when the best trial was promoted
    finalists: FinalistsResult | None = None  # when the study has a finalists block
    reference: ReferenceResult | None = None  # when the study has a reference that trained (now or earlier)


def tune(
    spec: StudySpec,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    threads: int | None = None,
    workers: int = 1,
    promote: bool | None = None,
    summary: bool = True,
    data: PreparedData | None = None,
    on_epoch: Callable[[optuna.Trial, EpochMetrics], None] | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    on_ready: Callable[[StudyHandle, PreparedData], None] | None = None,
    on_refit_epoch: Callable[[RefitTask, EpochMetrics], None] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> TuneResult:
    """Create or resume the study and run its trials; then re-train the finalists, refit the chosen configuration on
    every training row, train the reference, summarise on the parent run and promote (unless `summary` is False: a
    local worker, whose coordinator does those once, after every worker). With data.tune_rows the trials and
    finalists train on the study's sample of the training rows (`data` is then the whole dataset, the refit's, and
    the reference's when the study refits: like with like against the registered refit).

    With `workers` > 1 the trials run in that many local processes (each runs `deepfm tune STUDY --workers 1
    --no-summary`, what a team worker on another machine runs) and this process coordinates them; `threads` is
    then per worker (default: this machine's cores split between them)."""
    stores = resolve_stores(storage, tracking_uri, spec)
    check_stores(stores)  # a wrong URI fails in seconds, not after the data step
    check_reference(spec)  # a reference LightGBM cannot train as written fails now, not after the trials
    full = data or load_data(spec, log)  # bad data fails here, before any study or run exists
    data = spec.data.for_trials(full, log)  # with data.tune_rows: the sample, drawn once, before any worker starts
    latency = latency_probe(spec, data)  # with a latency budget: its rows, read before any study or run exists
    handle = init_study(spec, stores)
    if on_ready is not None:
        on_ready(handle, data)
    finalist_threads = threads
    finalists = reference = None
    try:
        with sigterm_as_interrupt() if workers > 1 else contextlib.nullcontext():
            if workers > 1:
                finalist_threads = threads or available_cores()  # they run here, after every worker has exited
                _trials_in_workers(handle, data, workers, threads or threads_per_worker(workers), log)
            else:
                control = spec.training.replace(threads=threads) if threads else spec.training
                run_trials(handle, data, control, on_epoch=on_epoch, on_trial=on_trial, latency=latency)
            if summary:  # before the summary, so the parent run is still open; a Ctrl-C here ends it KILLED too
                finalists = run_finalists(handle, data, threads=finalist_threads, log=log)
                trial_rows = len(data.parts["train"])
                if spec.refit is not None and data is not full:  # the sample is done with: its mapped pages
                    data = full  # go before the refits train on every row (the test rows are the same)
                    release_freed_memory()
                run_refit(handle, full, trial_rows=trial_rows, threads=finalist_threads, log=log,
                          on_epoch=on_refit_epoch)
                reference = run_reference(handle, full if spec.refit is not None else data, threads=finalist_threads,
                                          log=log)
    except KeyboardInterrupt:
        interrupts.handled()
        if summary:
            summarise(handle, status="KILLED")
        raise
    except WorkersFailed:
        summarise(handle, status="FAILED")
        raise
    best = summarise(handle) if summary else best_trial(handle.study)
    result = TuneResult(handle, best, trial_counts(handle.study), finalists=finalists, reference=reference)
    if (spec.promote if promote is None else promote) and best is not None:
        release_freed_memory()  # after the trials and refits: promotion scores every test row
        result.promotion = promote_study(handle, test_frame=data.test_frame(), test_dataset=part_dataset(data, "test"))
    return result


def release_freed_memory() -> None:
    """Unreferenced objects collected, and the C heap's free pages handed back to the system (glibc's malloc_trim):
    after many trials a process keeps hundreds of MB of freed batches and activations, which would add to the peak
    of the next big step (a refit on every row, promotion's scoring)."""
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to hand back this way
        pass


def _trials_in_workers(handle: StudyHandle, data: PreparedData, workers: int, threads: int,
                       log: Callable[[str], None]) -> None:
    spec = handle.spec
    log(f"study '{spec.name}' ({redact(handle.storage_url)}): {workers} local workers x {threads} "
        f"torch thread{'s' if threads > 1 else ''}, {spec.n_trials or 'unlimited'} trials in total; "
        f"data: {data.summary()}")
    run_workers(handle, workers, threads, log)
