"""The study's summary on its parent run: the best trial's score, params and V1 config, the lift over the V1
baseline, the serving budget's outcome (study.constraints: trials over it, the best trial's cost, the best overall
when it is another trial), the report, older checkpoints deleted, and the parent run ended.

How the parent run ends when a disk fails: the summary completes, the run ends FAILED with the reason. A full (or
read-only) artifact store fails the trials that write checkpoints and the summary's report upload.
`SummaryArtifacts` logs the summary's files and keeps the first disk error instead of crashing half-way;
`end_parent` ends the parent run (FAILED with a `deepfm.failure_reason` tag when a trial or the summary hit a disk
error, else the given status) and then raises one UserInputError line (exit 2 in the CLI).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna

from deepfm_tuner.model.config import policy_with_training_yaml
from deepfm_tuner.model.errors import UserInputError
from deepfm_tuner.tuner.pipeline.handle import StudyHandle
from deepfm_tuner.tuner.pipeline.report import write_report
from deepfm_tuner.tuner.spec.space import tuned_training
from deepfm_tuner.tuner.stores.disks import is_disk_error
from deepfm_tuner.tuner.stores.retry import retry
from deepfm_tuner.tuner.trials.baseline import is_baseline, lift_over_baseline
from deepfm_tuner.tuner.trials.constraints import budget_metrics
from deepfm_tuner.tuner.trials.names import ATTR_CHECKPOINT, ATTR_RUN_ID, TAG_FAILURE, curve_name, score_name
from deepfm_tuner.tuner.trials.record import (
    Training,
    best_trial,
    human_epoch,
    study_disk_failure,
    trained_config,
    trial_counts,
)
from deepfm_tuner.tuner.trials.runs import prune_checkpoints


def summarise(handle: StudyHandle, status: str = "FINISHED") -> optuna.trial.FrozenTrial | None:
    """Best-trial metrics, params and report on the parent run; older checkpoints deleted; parent ended."""
    study, tracker, spec = handle.study, handle.tracker, handle.spec
    best = best_trial(study)
    counts = trial_counts(study)
    metrics = {f"trials_{state.lower()}": n for state, n in counts.items()}
    metrics.update(budget_metrics(study, spec.metric))  # with study.constraints: the best trial is within them
    tags: dict[str, str] = {}
    artifacts = SummaryArtifacts(tracker, handle.parent_run_id)  # a full artifact disk: the summary still completes
    with tempfile.TemporaryDirectory(prefix="deepfm-report-") as tmp:
        if best is not None:
            policy, control = trained_config(best, spec)  # what the best trial trained, not today's study file
            metrics[score_name(spec.metric)] = best.value  # the best trial's score, under the trials' name
            training = Training.of(best)
            if training.best_epoch is not None:
                metrics["best_trial_best_epoch"] = human_epoch(training.best_epoch)
            if training.seconds is not None:
                metrics["best_trial_train_seconds"] = training.seconds
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


class SummaryArtifacts:
    """The summary's artifact uploads: a disk error is remembered (one line), not raised."""

    def __init__(self, tracker, run_id: str):
        self.tracker, self.run_id, self.error = tracker, run_id, None

    def log(self, path: str | Path, artifact_path: str | None = None) -> None:
        try:
            self.tracker.log_artifact(self.run_id, path, artifact_path)
        except Exception as exc:  # noqa: BLE001 - classified: only a disk error is expected here
            if not is_disk_error(exc):
                raise
            self.error = self.error or " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


def end_parent(handle, status: str, artifacts: SummaryArtifacts) -> None:
    """End the study's parent run; a disk failure makes it FAILED with its reason, then one error line."""
    failed = study_disk_failure(handle.study)
    if failed is not None:
        reason = f"trial {failed[0]} failed: {failed[1]}"
    elif artifacts.error is not None:
        reason = f"the summary's report could not be stored: {artifacts.error}"
    else:
        handle.tracker.end_run(handle.parent_run_id, status)
        return
    final = status if status == "KILLED" else "FAILED"
    retry(handle.tracker.set_tags, handle.parent_run_id, {TAG_FAILURE: reason})
    handle.tracker.end_run(handle.parent_run_id, final)
    if final == "FAILED":
        raise UserInputError(f"study '{handle.spec.name}' stopped on a disk error ({reason}); free some space on the "
                             f"artifact store (or point the study at another), then run the same command to resume")
