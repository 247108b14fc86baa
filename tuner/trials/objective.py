"""trial -> V1 policy -> train -> validation metric, with every epoch reported to Optuna and MLflow (with
`training.eval_every`: every evaluation point on the fixed validation sample, so pruning acts within epochs).

The objective is a closure over the study spec, the data (encoded once per process) and the tracker, in the
manner of Optuna's examples; `model/` never sees a Trial.
"""

from __future__ import annotations

import datetime
import time
from typing import Callable

import optuna

from deepfm_tuner.model.config import TrainConfig
from deepfm_tuner.model.data.tensors import PreparedData
from deepfm_tuner.model.errors import TrainingDiverged
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import SELECT_METRICS, EpochMetrics, StepMetrics, train, training_setup
from deepfm_tuner.tuner.spec.space import suggest_policy, suggest_training
from deepfm_tuner.tuner.spec.study import StudySpec
from deepfm_tuner.tuner.stores.datasets import run_datasets
from deepfm_tuner.tuner.stores.optuna_storage import MAX_STALE_RETRIES, RETRY_QUEUED_SECONDS
from deepfm_tuner.tuner.stores.tracking import StudyTracker
from deepfm_tuner.tuner.trials.constraints import ServingBudget
from deepfm_tuner.tuner.trials.names import (
    ATTR_BASELINE,
    ATTR_BASELINE_NOTE,
    ATTR_CHECKPOINT,
    ATTR_DEVICE,
    ATTR_FAILURE,
    ATTR_OPTIMIZER,
    ATTR_RETRY_OF,
    ATTR_RUN_ID,
    ATTR_SKIPPED,
    ATTR_WARM_START,
    ATTR_WORKER,
    PRUNED_AT_EPOCH,
    PRUNED_AT_STEP,
    SAMPLES_TRAINED,
    STEP_PREFIX,
    TAG_PRUNED_AT,
    TAG_PRUNED_AT_STEP,
    TAG_TRIAL,
    score_name,
    sub_epoch,
)
from deepfm_tuner.tuner.trials.record import Training, human_epoch, record_failure, record_trained
from deepfm_tuner.tuner.trials.runs import run_params, run_tags, training_run, worker_name


class TotalReached(Exception):
    """The study already has its total of trials (another worker got there first); this one is not run."""


def _retry_being_queued(t: optuna.trial.FrozenTrial, retried: set[int], now: datetime.datetime) -> bool:
    """A trial whose worker died (failed by the heartbeat check: it said nothing, unlike every failure in this
    objective, Ctrl-C included), failed a moment ago, with a retry due (Optuna's retry callback queues it right
    after the FAIL) that is not there yet. The window is bounded, so a retry that never comes frees the slot."""
    if t.state != optuna.trial.TrialState.FAIL or t.number in retried or t.datetime_complete is None:
        return False
    if ATTR_FAILURE in t.user_attrs or ATTR_SKIPPED in t.user_attrs:
        return False
    age = (now - t.datetime_complete).total_seconds()  # naive local times; a skewed clock: no hold, as before
    return len(t.system_attrs.get("retry_history", ())) < MAX_STALE_RETRIES and -5.0 <= age <= RETRY_QUEUED_SECONDS


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
    latency: Callable[[ScoringPolicy], float] | None = None,
) -> Callable[[optuna.Trial], float]:
    """`latency`: the served path's milliseconds for a trained policy (tuner.serving.latency), needed when the study
    has a latency budget (study.constraints.max_latency_ms; tuner.trials.constraints)."""
    setup = training_setup(base_control)  # this process's device: workers of one study may differ
    budget = ServingBudget(spec.constraints, prepared.encoder, latency)
    common_tags = {"deepfm.sampler": spec.sampler.type, "deepfm.pruner": spec.pruner.type,
                   **run_tags(prepared.fingerprint, base_control.seed, setup)}
    datasets = run_datasets(prepared)  # described once: every trial of this process logs the same data

    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except (optuna.TrialPruned, TotalReached):
            raise
        except BaseException as exc:  # every failure is said on the trial, Ctrl-C included: a FAIL that says
            if ATTR_FAILURE not in trial.user_attrs:  # nothing is a dead worker's trial (_check_total)
                record_failure(trial, exc)
            raise

    def run_trial(trial: optuna.Trial) -> float:
        trials = trial.study.get_trials(deepcopy=False)  # one read serves the total check and the retry lookup
        if spec.n_trials is not None:
            _check_total(trial, spec.n_trials, trials)
        policy = suggest_policy(trial, spec.space)
        control = suggest_training(trial, spec.training_space, base_control)
        record_trained(trial, policy, control)  # what this trial trains, exactly (status/summary/promote read it)
        worker = worker_name()
        trial.set_user_attr(ATTR_WORKER, worker)
        trial.set_user_attr(ATTR_DEVICE, setup["device"])
        trial.set_user_attr(ATTR_OPTIMIZER, setup["optimizer"])
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
        with training_run(tracker, parent_run_id, f"trial-{trial.number}", "trial", run_params(policy, control),
                          {TAG_TRIAL: str(trial.number), **tags}, datasets=datasets) as run:
            trial.set_user_attr(ATTR_RUN_ID, run.run_id)
            budget.count(trial, run, policy)
            return _train_and_report(trial, run, spec, prepared, policy, control, baseline, on_epoch, budget)

    return objective


def _train_and_report(trial: optuna.Trial, run, spec: StudySpec, prepared: PreparedData, policy, control: TrainConfig,
                      baseline: bool, on_epoch, budget: ServingBudget) -> float:
    """Train the trial's configuration, reporting to Optuna (pruning) and to its run; record what it did and
    whether it fits the serving budget (only a trial within it may keep a checkpoint as the best so far)."""
    started = time.perf_counter()
    best_so_far: dict[str, EpochMetrics] = {}  # best (by the study metric, as train() chooses) and last epoch
    sign = SELECT_METRICS[spec.metric]  # +1: higher is better
    by_step = sub_epoch(control)  # Optuna sees the sample's evaluation points, not the epochs
    last_step: dict[str, StepMetrics] = {}
    reporting = {"seconds": 0.0}  # time spent logging inside the training loop is platform overhead

    def report(metrics: EpochMetrics) -> None:
        began = time.perf_counter()
        run.log_epoch(metrics)
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
        run.tracker.log_epoch(run.run_id, metrics.step, {f"{STEP_PREFIX}{k}": getattr(metrics, k) for k in (
            "val_auc", "val_logloss", "train_loss", "samples")})
        last_step["last"] = metrics
        trial.report(getattr(metrics, spec.metric), metrics.step)
        reporting["seconds"] += time.perf_counter() - began
        if not baseline and trial.should_prune():  # never the baseline, as above
            raise optuna.TrialPruned(f"pruned at step {metrics.step} ({metrics.epochs:.2f} epochs)")

    train_started = time.perf_counter()
    try:
        result = train(prepared, policy, control, on_epoch=report, select=spec.metric,
                       on_eval=report_step if by_step else None)
        train_wall = time.perf_counter() - train_started - reporting["seconds"]
        overhead = time.perf_counter() - started - train_wall
        value = run.log_result(result, spec.metric, {SAMPLES_TRAINED: result.samples,
                                                     "platform_overhead_seconds": overhead})
        fits = budget.judge(trial, run, lambda: _as_served(policy, control, prepared, result.model))
        # the baseline keeps its checkpoint too: promotion compares the champion-to-be with it
        if baseline or (fits and _better(value, _study_best(trial.study), spec.direction)):
            trial.set_user_attr(ATTR_CHECKPOINT, run.save_checkpoint(policy, control, prepared, result))
        Training(seconds=result.train_seconds, wall_seconds=train_wall, best_epoch=result.best_epoch,
                 samples=result.samples).write(trial)
        run.finished()
        return value
    except optuna.TrialPruned:
        run.status, run.state = "KILLED", "PRUNED"
        _record_pruned(trial, run, spec.metric, by_step, best_so_far, last_step,
                       time.perf_counter() - train_started - reporting["seconds"])
        raise
    except TrainingDiverged as exc:
        run.fail(str(exc))
        raise
    except Exception as exc:
        run.fail(record_failure(trial, exc))
        raise


def _as_served(policy, control: TrainConfig, prepared: PreparedData, model) -> ScoringPolicy:
    """The trained policy as a registered model serves it, on the CPU: a GPU-trained model's weights are copied."""
    if next(model.parameters()).device.type == "cpu":
        return ScoringPolicy(policy, control, prepared.encoder, model)
    return ScoringPolicy.build(policy, control, prepared.encoder, model.state_dict())


def _record_pruned(trial: optuna.Trial, run, metric: str, by_step: bool, best_so_far: dict, last_step: dict,
                   wall_seconds: float) -> None:
    """Where a pruned trial stopped and its score so far, on the trial and its run (pruned trials trained too:
    overhead accounting needs it)."""
    training = {"wall_seconds": wall_seconds}
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
        training.update(score=getattr(best, metric), best_epoch=best.epoch)
        summary.update({score_name(metric): training["score"], "best_epoch": human_epoch(best.epoch)})
        if not by_step:
            pruned_at = best_so_far["last"].epoch
            training["pruned_at_epoch"] = summary[PRUNED_AT_EPOCH] = pruned_at
            tags[TAG_PRUNED_AT] = str(pruned_at)
    # pruned before its first epoch ended (eval_every): no full-validation score, so none is written
    run.tracker.log_summary(run.run_id, summary, tags=tags)
    Training(**training).write(trial)


def _check_total(trial: optuna.Trial, total: int, trials: list[optuna.trial.FrozenTrial]) -> None:
    """With many workers, a trial started after the total was reached is not run (MaxTrialsCallback only
    stops a worker after its own trial ends, so workers would overshoot).

    A retry of a dead worker's trial inherits that trial's slot: it is always run, and a retry still waiting or
    running holds its slot against new trials, so the dead trial's configuration is the one that gets re-run. So
    does the dead trial itself between its FAIL and its retry's appearance (two storage writes by the worker that
    found it stale), else a new trial started in that window overshoots the total by one."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    this = next(t for t in trials if t.number == trial.number)
    if this.system_attrs.get("failed_trial") is not None:
        return
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    now = datetime.datetime.now()
    taken = [t for t in trials if t.number != trial.number and (
        (t.state in states and t.number < trial.number)
        or (t.system_attrs.get("failed_trial") is not None and t.state in (optuna.trial.TrialState.WAITING,
                                                                          optuna.trial.TrialState.RUNNING))
        or _retry_being_queued(t, retried, now))]
    if len(taken) >= total:
        trial.study.stop()
        trial.set_user_attr(ATTR_SKIPPED, "total reached")
        raise TotalReached(f"the study already has {total} trials")
