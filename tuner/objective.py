"""trial -> V1 policy -> train -> validation metric, with every epoch reported to Optuna and MLflow.

The objective is a closure over the study spec, the data (encoded once per process) and the tracker, in the
manner of Optuna's examples; `model/` never sees a Trial.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

import optuna
from mlflow.artifacts import download_artifacts

from model.config import PolicyConfig, TrainConfig
from model.dataset import PreparedData
from model.errors import TrainingDiverged
from model.policy import ScoringPolicy
from model.train import EpochMetrics, train

from . import interrupts
from .records import record_failure, record_trained
from .space import suggest_policy, suggest_training
from .study import StudySpec
from .names import (ATTR_BASELINE, ATTR_BASELINE_NOTE, ATTR_CHECKPOINT, ATTR_RETRY_OF, ATTR_RUN_ID,  # noqa: F401
                    ATTR_SKIPPED, ATTR_TRAINING, ATTR_WARM_START, ATTR_WORKER, TAG_FAILURE, TAG_PRUNED_AT,
                    TAG_STATE)
from .tracking import StudyTracker, git_commit

CHECKPOINT_PATH = "checkpoint"
EPOCH_PREFIX = "epoch_"  # per-epoch curves: epoch_val_auc, epoch_val_logloss, epoch_train_loss, ... (one per step)
PRUNED_AT_EPOCH = "pruned_at_epoch"  # metric: 0-based step the trial was pruned at (as MLflow steps)


def score_name(metric: str) -> str:
    """The one name of a trial's score everywhere (MLflow runs table, parent run, status, report, registry tags):
    `score_<metric>`, the study metric at the trial's best epoch (for a pruned trial: its best epoch so far)."""
    return f"score_{metric}"


class TotalReached(Exception):
    """The study already has its total of trials (another worker got there first); this one is not run."""


def trial_params(policy: PolicyConfig, control: TrainConfig) -> dict[str, object]:
    """MLflow params: the V1 values under their V1 names, the training control under `training.`."""
    params: dict[str, object] = {k: v for k, v in policy.to_dict().items()}
    params.update({f"training.{k}": v for k, v in control.to_dict().items()})
    return params


def _better(value: float, best: float | None, direction: str) -> bool:
    return best is None or (value > best if direction == "maximize" else value < best)


def _study_best(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:
        return None


def make_objective(
    spec: StudySpec,
    prepared: PreparedData,
    tracker: StudyTracker,
    parent_run_id: str,
    base_control: TrainConfig,
    on_epoch: Callable[[optuna.Trial, EpochMetrics], None] | None = None,
    failure_injector: Callable[[optuna.Trial, PolicyConfig], PolicyConfig] | None = None,
) -> Callable[[optuna.Trial], float]:
    common_tags = {
        "deepfm.sampler": spec.sampler.type,
        "deepfm.pruner": spec.pruner.type,
        "deepfm.data_fingerprint": prepared.fingerprint,
        "deepfm.seed": str(base_control.seed),
        **({"mlflow.source.git.commit": git_commit()} if git_commit() else {}),
    }

    def objective(trial: optuna.Trial) -> float:
        trials = trial.study.get_trials(deepcopy=False)  # one read serves the total check and the retry lookup
        if spec.n_trials is not None:
            _check_total(trial, spec.n_trials, trials)
        policy = suggest_policy(trial, spec.space)
        control = suggest_training(trial, spec.training_space, base_control)
        if failure_injector is not None:
            policy = failure_injector(trial, policy)
        record_trained(trial, policy, control)  # what this trial trains, exactly (status/summary/promote read it)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        trial.set_user_attr(ATTR_WORKER, worker)
        tags = {**common_tags, "deepfm.worker": worker}
        baseline = bool(trial.user_attrs.get(ATTR_BASELINE))
        if baseline:
            tags["deepfm.baseline"] = "true"
            if trial.user_attrs.get(ATTR_BASELINE_NOTE):
                tags["deepfm.baseline_adjusted"] = trial.user_attrs[ATTR_BASELINE_NOTE]
        if trial.user_attrs.get(ATTR_WARM_START):
            tags["deepfm.warm_start_from"] = trial.user_attrs[ATTR_WARM_START]
        frozen = next(t for t in trials if t.number == trial.number)
        retry_of = frozen.system_attrs.get("failed_trial")  # set by Optuna's retry callbacks
        if retry_of is not None:
            tags["deepfm.retry_of_trial"] = str(retry_of)
            old_run = trial.user_attrs.get(ATTR_RUN_ID)  # a retry inherits the dead trial's user attrs
            if old_run:
                tags["deepfm.retry_of_run_id"] = old_run
                trial.set_user_attr(ATTR_RETRY_OF, old_run)
        run_id = tracker.start_trial_run(parent_run_id, trial.number, trial_params(policy, control), tags)
        trial.set_user_attr(ATTR_RUN_ID, run_id)
        status, state = "FAILED", "FAIL"
        started = time.perf_counter()
        score = score_name(spec.metric)
        best_so_far: dict[str, EpochMetrics] = {}  # best (chosen as train() chooses: val AUC) and last epoch so far
        try:
            reporting = {"seconds": 0.0}  # time spent logging inside the training loop is platform overhead

            def report(metrics: EpochMetrics) -> None:
                began = time.perf_counter()
                tracker.log_epoch(run_id, metrics.epoch, {f"{EPOCH_PREFIX}{k}": v for k, v in {
                    "val_auc": metrics.val_auc, "val_logloss": metrics.val_logloss, "train_loss": metrics.train_loss,
                    "seconds": metrics.seconds, "samples_per_second": metrics.samples_per_second}.items()})
                if "best" not in best_so_far or metrics.val_auc > best_so_far["best"].val_auc:
                    best_so_far["best"] = metrics
                best_so_far["last"] = metrics
                trial.report(getattr(metrics, spec.metric), metrics.epoch)
                if on_epoch is not None:
                    on_epoch(trial, metrics)
                reporting["seconds"] += time.perf_counter() - began
                if not baseline and trial.should_prune():  # the baseline runs to the end: it is the reference
                    raise optuna.TrialPruned(f"pruned after epoch {metrics.epoch + 1}")

            train_started = time.perf_counter()
            result = train(prepared, policy, control, on_epoch=report, select=spec.metric)
            train_wall = time.perf_counter() - train_started - reporting["seconds"]
            value = getattr(result.best, spec.metric)
            overhead = time.perf_counter() - started - train_wall
            tracker.log_summary(run_id, {
                score: value, **{f"best_epoch_{m}": getattr(result.best, m) for m in ("val_auc", "val_logloss")
                                 if m != spec.metric},
                "best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
                "epochs_trained": len(result.history), "platform_overhead_seconds": overhead}, tags={
                "deepfm.stop_reason": result.stop_reason, TAG_STATE: "COMPLETE"})
            # the baseline keeps its checkpoint too: promotion compares the champion-to-be with it
            if baseline or _better(value, _study_best(trial.study), spec.direction):
                _save_checkpoint(tracker, run_id, ScoringPolicy(policy, control, prepared.encoder, result.model, {
                    "best_epoch": result.best_epoch, "val_auc": result.best.val_auc,
                    "val_logloss": result.best.val_logloss, "data_fingerprint": prepared.fingerprint,
                    "history": [m.to_dict() for m in result.history]}))
                trial.set_user_attr(ATTR_CHECKPOINT, f"runs:/{run_id}/{CHECKPOINT_PATH}")
            trial.set_user_attr(ATTR_TRAINING, {  # one write: each attribute is a round trip to the storage
                "seconds": result.train_seconds, "wall_seconds": train_wall, "best_epoch": result.best_epoch})
            status, state = "FINISHED", "COMPLETE"
            return value
        except optuna.TrialPruned:
            status, state = "KILLED", "PRUNED"
            training = {"wall_seconds": time.perf_counter() - train_started - reporting["seconds"]}
            if "best" in best_so_far:  # its score so far, so no view ranks a pruned trial by a missing value
                best, pruned_at = best_so_far["best"], best_so_far["last"].epoch
                training.update(score=getattr(best, spec.metric), best_epoch=best.epoch, pruned_at_epoch=pruned_at)
                tracker.log_summary(run_id, {score: training["score"], "best_epoch": best.epoch,
                                             PRUNED_AT_EPOCH: pruned_at}, tags={TAG_PRUNED_AT: str(pruned_at)})
            trial.set_user_attr(ATTR_TRAINING, training)  # pruned trials trained too: overhead accounting needs it
            raise
        except TrainingDiverged as exc:
            tracker.set_tags(run_id, {TAG_FAILURE: str(exc)})
            raise
        except Exception as exc:
            tracker.set_tags(run_id, {TAG_FAILURE: record_failure(trial, exc)})
            raise
        except BaseException:  # Ctrl-C / SystemExit: Optuna marks the trial FAIL; the run must not stay RUNNING
            interrupts.handled()  # the trial is closed below; no second interrupt may cut that short
            tracker.set_tags(run_id, {TAG_FAILURE: "interrupted (KeyboardInterrupt)"})
            raise
        finally:
            if state != "COMPLETE":  # the success path wrote its state with the summary
                tracker.set_tags(run_id, {TAG_STATE: state})
            tracker.end_run(run_id, status)

    return objective


def _check_total(trial: optuna.Trial, total: int, trials: list[optuna.trial.FrozenTrial]) -> None:
    """With many workers, a trial started after the total was reached is not run (MaxTrialsCallback only
    stops a worker after its own trial ends, so workers would overshoot).

    A retry of a dead worker's trial inherits that trial's slot: it is always run, and a retry still waiting or
    running holds its slot against new trials, so the dead trial's configuration is the one that gets re-run."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    this = next(t for t in trials if t.number == trial.number)
    if this.system_attrs.get("failed_trial") is not None:
        return
    taken = [t for t in trials if t.number != trial.number and (
        (t.state in states and t.number < trial.number)
        or (t.system_attrs.get("failed_trial") is not None and t.state in (optuna.trial.TrialState.WAITING,
                                                                          optuna.trial.TrialState.RUNNING)))]
    if len(taken) >= total:
        trial.study.stop()
        trial.set_user_attr(ATTR_SKIPPED, "total reached")
        raise TotalReached(f"the study already has {total} trials")


def _save_checkpoint(tracker: StudyTracker, run_id: str, policy: ScoringPolicy) -> None:
    """Log the trial's policy directory as an artifact of its run (only trials that were best when they ended)."""
    with tempfile.TemporaryDirectory(prefix="deepfm-ckpt-") as tmp:
        policy.save(Path(tmp) / CHECKPOINT_PATH)
        tracker.log_artifact(run_id, Path(tmp) / CHECKPOINT_PATH)


def download_checkpoint(tracking_uri: str, checkpoint_uri: str, dst: Path) -> Path:
    """The policy directory saved by the best trial."""
    dst.mkdir(parents=True, exist_ok=True)
    local = download_artifacts(artifact_uri=checkpoint_uri, dst_path=str(dst), tracking_uri=tracking_uri)
    return Path(local)


def prune_checkpoints(tracker: StudyTracker, keep_run_id: str, run_ids: list[str]) -> int:
    """Delete the checkpoints of trials that are no longer the best (best effort; some stores cannot delete)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    deleted = 0
    for run_id in run_ids:
        if run_id == keep_run_id:
            continue
        try:
            run = tracker.client.get_run(run_id)
            get_artifact_repository(run.info.artifact_uri).delete_artifacts(CHECKPOINT_PATH)
            deleted += 1
        except Exception:  # noqa: BLE001 - deleting is an optimisation, never a failure
            continue
    return deleted

