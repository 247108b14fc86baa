"""One worker's share of a study's trials: run trials until the study's total (over all workers) is reached, the
timeout passes, or too many fail in a row; a dead worker's trial is failed and re-run by a live one."""

from __future__ import annotations

import functools
import time
import traceback
from typing import Callable

import optuna

from deepfm_tuner.model.config import TrainConfig
from deepfm_tuner.model.data.tensors import PreparedData
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import EpochMetrics
from deepfm_tuner.tuner.pipeline.handle import StudyHandle
from deepfm_tuner.tuner.serving.latency import BATCH_ROWS, latency_batch, scoring_latency_ms
from deepfm_tuner.tuner.stores.optuna_storage import heartbeat_settings
from deepfm_tuner.tuner.stores.retry import retry
from deepfm_tuner.tuner.trials.names import ATTR_SKIPPED
from deepfm_tuner.tuner.trials.objective import make_objective
from deepfm_tuner.tuner.trials.record import disk_failure

MAX_CONSECUTIVE_FAILURES = 5


def finished_count(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def releasing(objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
    """`objective`, with the frames of an exception it raises cleared on the way out: a pruned or failed trial's
    exception, which Optuna keeps in a cycle and logs (a log handler may keep the record), then holds none of
    train()'s locals: its model, optimizer and device copy of the data are freed when the trial ends."""

    def run(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)
            raise

    return run


def latency_probe(spec, prepared: PreparedData) -> Callable[[ScoringPolicy], float] | None:
    """With study.constraints.max_latency_ms: the served path's milliseconds for a trained policy, on a batch of
    the test split's raw rows read once here (before the study exists, so a dataset without test rows fails first)."""
    if spec.constraints is None or spec.constraints.max_latency_ms is None:
        return None
    try:
        rows = prepared.test_frame(rows=BATCH_ROWS)
    except DataError as exc:
        raise DataError(f"study.constraints.max_latency_ms times scoring on the test split's raw rows: {exc}") from None
    return functools.partial(scoring_latency_ms, batch=latency_batch(rows))


def run_trials(
    handle: StudyHandle,
    prepared: PreparedData,
    control: TrainConfig,
    on_epoch: Callable[[optuna.Trial, EpochMetrics], None] | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    latency: Callable[[ScoringPolicy], float] | None = None,
) -> None:
    """Run trials until the study's total (over all workers) is reached, the timeout passes, or too many fail;
    `latency` (see `latency_probe`) times each complete trial's policy when the study has a latency budget."""
    spec, study = handle.spec, handle.study
    objective = releasing(make_objective(spec, prepared, handle.tracker, handle.parent_run_id, control, on_epoch,
                                         latency))
    callbacks = []
    if spec.n_trials is not None:  # stop taking trials once the rest are finished or held by other workers
        callbacks.append(optuna.study.MaxTrialsCallback(spec.n_trials, states=(
            optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)))
    consecutive = {"failures": 0, "stopped": False}

    def stop_on_failures(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get(ATTR_SKIPPED):  # not run: the total was reached first
            return
        failed = trial.state == optuna.trial.TrialState.FAIL
        consecutive["failures"] = consecutive["failures"] + 1 if failed else 0
        if consecutive["failures"] >= MAX_CONSECUTIVE_FAILURES or (failed and disk_failure(trial)):  # a full disk stays full
            consecutive["stopped"] = True
            study.stop()

    callbacks.append(stop_on_failures)
    if on_trial is not None:
        callbacks.append(lambda study, trial: None if trial.user_attrs.get(ATTR_SKIPPED) else on_trial(study, trial))
    if spec.n_trials is not None and finished_count(study) >= spec.n_trials:
        return
    retry(handle.tracker.set_status, handle.parent_run_id, "RUNNING")
    deadline = None if spec.timeout is None else time.monotonic() + spec.timeout
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        # gc_after_trial: the first trial of a process keeps train()'s frame (its model, optimizer and device copy
        # of the data) in a cycle torch's lazy imports leave behind, as a pruned or failed trial's exception does
        # in Optuna (`releasing` clears those frames); a full collection after each trial frees them before the
        # next trial measures the memory it may use. It costs ~0.2-0.7 s a trial (700k objects tracked, measured
        # on 2 shared cores), small beside a trial's training.
        study.optimize(objective, n_trials=None, timeout=remaining, callbacks=callbacks,
                       catch=(Exception,), gc_after_trial=True, show_progress_bar=False)
        if consecutive["stopped"] or spec.n_trials is None or not _wait_for_others(study, spec.n_trials, deadline):
            return


def _wait_for_others(study: optuna.Study, total: int, deadline: float | None) -> bool:
    """The rest of the total is held by other workers: wait until they finish (False) or a trial needs running
    again (True): one failed, or its worker died and the heartbeat check turned it into a WAITING retry.

    Optuna fails stale trials only when a worker starts a new trial, so a worker that simply exited here could
    leave a dead worker's trial RUNNING for ever and the study one trial short."""
    heartbeat, _ = heartbeat_settings()
    states = optuna.trial.TrialState
    while True:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in (states.COMPLETE, states.PRUNED) for t in trials)
        running = sum(t.state == states.RUNNING for t in trials)
        if finished >= total:
            return False
        if any(t.state == states.WAITING for t in trials) or finished + running < total:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(min(heartbeat, 5))
        optuna.storages.fail_stale_trials(study)

