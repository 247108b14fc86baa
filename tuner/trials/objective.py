"""trial -> V1 policy -> train -> validation metric, with every epoch reported to Optuna and MLflow (with
`training.eval_every`: every evaluation point on the fixed validation sample, so pruning acts within epochs).

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

from deepfm_tuner.model.config import PolicyConfig, TrainConfig
from deepfm_tuner.model.data.tensors import PreparedData
from deepfm_tuner.model.errors import TrainingDiverged
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import SELECT_METRICS, EpochMetrics, StepMetrics, train

from deepfm_tuner.tuner.trials import interrupts
from deepfm_tuner.tuner.trials.records import record_failure, record_trained
from deepfm_tuner.tuner.spec.space import suggest_policy, suggest_training
from deepfm_tuner.tuner.spec.study import StudySpec
from deepfm_tuner.tuner.trials.names import (ATTR_BASELINE, ATTR_BASELINE_NOTE, ATTR_CHECKPOINT, ATTR_RETRY_OF, ATTR_RUN_ID,  # noqa: F401
                    ATTR_SKIPPED, ATTR_TRAINING, ATTR_WARM_START, ATTR_WORKER, TAG_FAILURE, TAG_PRUNED_AT,
                    TAG_PRUNED_AT_STEP, TAG_STATE)
from deepfm_tuner.tuner.stores.tracking import StudyTracker, git_commit

CHECKPOINT_PATH = "checkpoint"
EPOCH_PREFIX = "epoch_"  # per-epoch curves: epoch_val_auc, epoch_val_logloss, epoch_train_loss, ... (one per step)
PRUNED_AT_EPOCH = "pruned_at_epoch"  # metric: 0-based step the trial was pruned at (as MLflow steps)
STEP_PREFIX = "step_"  # with eval_every, curves on the validation sample at the Optuna report steps: step_val_auc,
#   step_val_logloss, step_train_loss (this epoch's rows so far), step_samples (training rows so far)
PRUNED_AT_STEP = "pruned_at_step"  # with eval_every: metric, the 0-based report step the trial was pruned at
SAMPLES_TRAINED = "samples_trained"  # metric: training rows a trial processed (complete or pruned), all epochs


def score_name(metric: str) -> str:
    """The one name of a trial's score everywhere (MLflow runs table, parent run, status, report, registry tags):
    `score_<metric>`, the study metric at the trial's best epoch (for a pruned trial: its best epoch so far)."""
    return f"score_{metric}"


def sub_epoch(control: TrainConfig) -> bool:
    """Trials report (and are pruned) at every evaluation point on the validation sample, not every epoch:
    `training.eval_every` below 1."""
    return control.evals_per_epoch > 1


def curve_name(metric: str, control: TrainConfig) -> str:
    """The MLflow curve holding a trial's Optuna intermediate values, at the same steps: `step_<metric>` with
    eval_every below 1, else `epoch_<metric>`."""
    return f"{STEP_PREFIX if sub_epoch(control) else EPOCH_PREFIX}{metric}"


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
        best_so_far: dict[str, EpochMetrics] = {}  # best (by the study metric, as train() chooses) and last epoch
        sign = SELECT_METRICS[spec.metric]  # +1: higher is better
        by_step = sub_epoch(control)  # Optuna sees the sample's evaluation points, not the epochs
        last_step: dict[str, StepMetrics] = {}
        try:
            reporting = {"seconds": 0.0}  # time spent logging inside the training loop is platform overhead

            def report(metrics: EpochMetrics) -> None:
                began = time.perf_counter()
                tracker.log_epoch(run_id, metrics.epoch, {f"{EPOCH_PREFIX}{k}": v for k, v in {
                    "val_auc": metrics.val_auc, "val_logloss": metrics.val_logloss, "train_loss": metrics.train_loss,
                    "seconds": metrics.seconds, "samples_per_second": metrics.samples_per_second}.items()})
                if "best" not in best_so_far or sign * getattr(metrics, spec.metric) > sign * getattr(
                        best_so_far["best"], spec.metric):
                    best_so_far["best"] = metrics
                best_so_far["last"] = metrics
                if not by_step:
                    trial.report(getattr(metrics, spec.metric), metrics.epoch)
                if on_epoch is not None:
                    on_epoch(trial, metrics)
                reporting["seconds"] += time.perf_counter() - began
                # the baseline runs to the end: it is the reference
                if not by_step and not baseline and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {metrics.epoch + 1}")

            def report_step(metrics: StepMetrics) -> None:
                began = time.perf_counter()
                tracker.log_epoch(run_id, metrics.step, {f"{STEP_PREFIX}{k}": getattr(metrics, k) for k in (
                    "val_auc", "val_logloss", "train_loss", "samples")})
                last_step["last"] = metrics
                trial.report(getattr(metrics, spec.metric), metrics.step)
                reporting["seconds"] += time.perf_counter() - began
                if not baseline and trial.should_prune():  # never the baseline, as above
                    raise optuna.TrialPruned(f"pruned at step {metrics.step} ({metrics.epochs:.2f} epochs)")

            train_started = time.perf_counter()
            result = train(prepared, policy, control, on_epoch=report, select=spec.metric,
                           on_eval=report_step if by_step else None)
            train_wall = time.perf_counter() - train_started - reporting["seconds"]
            value = getattr(result.best, spec.metric)
            overhead = time.perf_counter() - started - train_wall
            tracker.log_summary(run_id, {
                score: value, **{f"best_epoch_{m}": getattr(result.best, m) for m in ("val_auc", "val_logloss")
                                 if m != spec.metric},
                "best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
                "epochs_trained": len(result.history), SAMPLES_TRAINED: result.samples,
                "platform_overhead_seconds": overhead}, tags={
                "deepfm.stop_reason": result.stop_reason, TAG_STATE: "COMPLETE"})
            # the baseline keeps its checkpoint too: promotion compares the champion-to-be with it
            if baseline or _better(value, _study_best(trial.study), spec.direction):
                _save_checkpoint(tracker, run_id, ScoringPolicy(policy, control, prepared.encoder, result.model, {
                    "best_epoch": result.best_epoch, "val_auc": result.best.val_auc,
                    "val_logloss": result.best.val_logloss, "data_fingerprint": prepared.fingerprint,
                    "history": [m.to_dict() for m in result.history]}))
                trial.set_user_attr(ATTR_CHECKPOINT, f"runs:/{run_id}/{CHECKPOINT_PATH}")
            trial.set_user_attr(ATTR_TRAINING, {  # one write: each attribute is a round trip to the storage
                "seconds": result.train_seconds, "wall_seconds": train_wall, "best_epoch": result.best_epoch,
                "samples": result.samples})
            status, state = "FINISHED", "COMPLETE"
            return value
        except optuna.TrialPruned:
            status, state = "KILLED", "PRUNED"
            training = {"wall_seconds": time.perf_counter() - train_started - reporting["seconds"]}
            summary, tags = {}, {}
            if by_step and "last" in last_step:  # where it stopped: a report step, possibly mid-epoch
                step = last_step["last"]
                training.update(pruned_at_step=step.step, epochs_trained=round(step.epochs, 6))
                summary.update({PRUNED_AT_STEP: step.step, "epochs_trained": step.epochs})
                tags[TAG_PRUNED_AT_STEP] = str(step.step)
            samples = max([m.samples for m in (*best_so_far.values(), *last_step.values())], default=0)
            training["samples"] = summary[SAMPLES_TRAINED] = samples
            if "best" in best_so_far:  # its score so far, so no view ranks a pruned trial by a missing value
                best = best_so_far["best"]
                training.update(score=getattr(best, spec.metric), best_epoch=best.epoch)
                summary.update({score: training["score"], "best_epoch": best.epoch})
                if not by_step:
                    pruned_at = best_so_far["last"].epoch
                    training["pruned_at_epoch"] = summary[PRUNED_AT_EPOCH] = pruned_at
                    tags[TAG_PRUNED_AT] = str(pruned_at)
            # pruned before its first epoch ended (eval_every): no full-validation score, so none is written
            tracker.log_summary(run_id, summary, tags=tags)
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

