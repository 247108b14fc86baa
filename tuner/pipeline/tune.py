"""`deepfm tune` as a library call: map the encoded data (built once), init the study, run trials, re-seed the
finalists (if the study file asks), summarise, promote."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from deepfm_tuner.model.config import TrainConfig, policy_with_training_yaml
from deepfm_tuner.model.data.tensors import PreparedData
from deepfm_tuner.model.train import EpochMetrics

from deepfm_tuner.tuner.trials.baseline import is_baseline, lift_over_baseline
from deepfm_tuner.tuner.trials.objective import (ATTR_CHECKPOINT, ATTR_RUN_ID, ATTR_SKIPPED, ATTR_TRAINING, curve_name, prune_checkpoints,
                        score_name)
from deepfm_tuner.tuner.trials import interrupts
from deepfm_tuner.tuner.trials.finalists import run_finalists
from deepfm_tuner.tuner.pipeline.outcome import SummaryArtifacts, end_parent
from deepfm_tuner.tuner.trials.records import best_trial, trained_config  # noqa: F401 - best_trial: importable from here
from deepfm_tuner.tuner.pipeline.report import write_report
from deepfm_tuner.tuner.pipeline.runner import StudyHandle, check_stores, init_study, run_trials
from deepfm_tuner.tuner.spec.space import tuned_training
from deepfm_tuner.tuner.spec.study import StudySpec


def load_data(spec: StudySpec, log: Callable[[str], None] = lambda message: None) -> PreparedData:
    """The study's encoded dataset, mapped (built on first use: the one expensive data step of a study)."""
    return spec.data.prepare(log)


@dataclass
class TuneResult:
    handle: StudyHandle
    best_trial: optuna.trial.FrozenTrial | None
    counts: dict[str, int] = field(default_factory=dict)
    promotion: Any = None
    finalists: Any = None  # tuner.finalists.FinalistsResult when the study has a finalists block


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state name; a trial claimed after the total was reached (failed without running) is SKIPPED."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        state = "SKIPPED" if trial.user_attrs.get(ATTR_SKIPPED) else trial.state.name
        counts[state] = counts.get(state, 0) + 1
    return counts


def trial_score(trial: optuna.trial.FrozenTrial, direction: str) -> float | None:
    """A trial's score (`score_<metric>`): a complete trial's value; a pruned trial's best epoch so far (Optuna
    stores its LAST reported value as its value, which is not the score); None for a trial that never scored
    (e.g. pruned by eval_every before its first epoch ended: its reports are on the validation sample)."""
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return trial.value
    if trial.state == optuna.trial.TrialState.PRUNED:
        training = trial.user_attrs.get(ATTR_TRAINING, {})
        stored = training.get("score")
        if stored is not None or "pruned_at_step" in training:
            return stored
        if trial.intermediate_values:  # a study from before scores were stored: the best reported value
            return (max if direction == "maximize" else min)(trial.intermediate_values.values())
    return None


def pruned_at_epoch(trial: optuna.trial.FrozenTrial) -> int | None:
    """The 0-based epoch after which a pruned trial stopped (its last report), else None; None too for a trial
    pruned at a sub-epoch report step (training.eval_every: see `pruned_where`)."""
    if trial.state != optuna.trial.TrialState.PRUNED:
        return None
    training = trial.user_attrs.get(ATTR_TRAINING, {})
    if "pruned_at_step" in training:
        return None
    stored = training.get("pruned_at_epoch")
    return stored if stored is not None else max(trial.intermediate_values, default=None)


def pruned_where(trial: optuna.trial.FrozenTrial) -> str | None:
    """Where a pruned trial stopped, as people read it: "pruned at epoch 2" (1-based), or with eval_every
    "pruned after 1.25 epochs" (training done when a sub-epoch report pruned it); None if not pruned."""
    from deepfm_tuner.tuner.cli.progress import human_epoch

    if trial.state != optuna.trial.TrialState.PRUNED:
        return None
    training = trial.user_attrs.get(ATTR_TRAINING, {})
    if "pruned_at_step" in training:
        return f"pruned after {training.get('epochs_trained', float('nan')):.2f} epochs"
    epoch = pruned_at_epoch(trial)
    return "pruned" if epoch is None else f"pruned at epoch {human_epoch(epoch)}"


def summarise(handle: StudyHandle, status: str = "FINISHED") -> optuna.trial.FrozenTrial | None:
    """Best-trial metrics, params and report on the parent run; older checkpoints deleted; parent ended."""
    study, tracker, spec = handle.study, handle.tracker, handle.spec
    best = best_trial(study)
    counts = trial_counts(study)
    metrics = {f"trials_{state.lower()}": n for state, n in counts.items()}
    tags: dict[str, str] = {}
    artifacts = SummaryArtifacts(tracker, handle.parent_run_id)  # a full artifact disk: the summary still completes
    with tempfile.TemporaryDirectory(prefix="deepfm-report-") as tmp:
        if best is not None:
            policy, control = trained_config(best, spec)  # what the best trial trained, not today's study file
            metrics[score_name(spec.metric)] = best.value  # the best trial's score, under the trials' name
            training = best.user_attrs.get(ATTR_TRAINING, {})
            for key in ("best_epoch", "seconds"):
                if key in training:
                    metrics[f"best_trial_{'train_' if key == 'seconds' else ''}{key}"] = training[key]
            tags = {"deepfm.best_trial": str(best.number), "deepfm.best_run_id": best.user_attrs.get(ATTR_RUN_ID, "")}
            lift = lift_over_baseline(study)
            if lift is not None:  # > 0: the best trial beat the V1 baseline (sign follows the direction)
                metrics["lift_over_baseline"], metrics[f"baseline_{score_name(spec.metric)}"] = lift[0], lift[1].value
                tags["deepfm.baseline_trial"] = str(lift[1].number)
            best_params = policy.to_dict()
            if control is not None:  # the tuned training knobs too: best.training.embedding_l2, ...
                best_params.update({f"training.{k}": v for k, v in tuned_training(control, spec.training_space).items()})
            tracker.log_summary(handle.parent_run_id, metrics, params=best_params, tags=tags)
            # the V1 config, with the training control it was trained with beside it (tuned knobs included)
            (Path(tmp) / "best_policy.yaml").write_text(policy_with_training_yaml(policy, control))
            artifacts.log(Path(tmp) / "best_policy.yaml")
            keep = best.user_attrs.get(ATTR_RUN_ID)
            # the best trial's checkpoint is promoted; the baseline's is what promotion compares it with
            with_ckpt = [t.user_attrs[ATTR_RUN_ID] for t in study.get_trials(deepcopy=False)
                         if ATTR_CHECKPOINT in t.user_attrs and ATTR_RUN_ID in t.user_attrs and not is_baseline(t)]
            prune_checkpoints(tracker, keep, with_ckpt)
        else:
            tracker.log_summary(handle.parent_run_id, metrics)
        write_report(study, Path(tmp) / "report.html", spec.metric, curve_name(spec.metric, spec.training))
        artifacts.log(Path(tmp) / "report.html", "report")
    end_parent(handle, status, artifacts)  # FAILED with the reason (and one error line) after a disk error
    return best


def tune(
    spec: StudySpec,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    threads: int | None = None,
    promote: bool | None = None,
    data: PreparedData | None = None,
    on_epoch: Callable[[optuna.Trial, EpochMetrics], None] | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    on_ready: Callable[[StudyHandle, PreparedData], None] | None = None,
    log: Callable[[str], None] = lambda message: None,
    failure_injector=None,
    summary: bool = True,
) -> TuneResult:
    """Create or resume the study and run this worker's share of its trials; then re-train the finalists and
    summarise on the parent run (unless `summary` is False: a local worker whose coordinator does both once,
    after every worker)."""
    check_stores(spec, storage, tracking_uri)  # a wrong URI fails in seconds, not after the data step
    data = data or load_data(spec, log)  # bad data fails here, before any study or run exists
    handle = init_study(spec, storage, tracking_uri)
    control: TrainConfig = spec.training.replace(threads=threads) if threads else spec.training
    if on_ready is not None:
        on_ready(handle, data)
    finalists = None
    try:
        run_trials(handle, data, control, on_epoch=on_epoch, on_trial=on_trial,
                   failure_injector=failure_injector)
        if summary:  # before the summary, so the parent run is still open; a Ctrl-C here ends it KILLED too
            finalists = run_finalists(handle, data, threads=threads, log=log)
    except KeyboardInterrupt:
        interrupts.handled()
        if summary:
            summarise(handle, status="KILLED")
        raise
    best = summarise(handle) if summary else best_trial(handle.study)
    result = TuneResult(handle, best, trial_counts(handle.study), finalists=finalists)
    if (spec.promote if promote is None else promote) and best is not None:
        from deepfm_tuner.tuner.pipeline.promotion import promote_study

        result.promotion = promote_study(handle, test_frame=data.test_frame())
    return result

