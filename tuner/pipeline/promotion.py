"""Promote a study's best trial: its checkpoint -> registered model version -> `champion` (if it passes the gate).

With `study.finalists`, the candidate is instead the configuration chosen by the mean over its re-seeded runs
(tuner.trials.finalists): its best retrain's checkpoint is registered, and the version's `finalist.*` tags say so.

The gate (`promotion: {require, alpha}` in the study file) is DeLong's paired AUC test against the current
champion on the same test rows; the study's V1 baseline trial, when its checkpoint exists, is compared the same
way to say whether tuning helped at all. The baseline guard: a tuned candidate that is significantly worse than
the V1 baseline on the test rows (DeLong, the gate's alpha) is not registered; the baseline trial is the candidate
instead (tags `chosen_by=baseline_guard`, `guard.*`), so a study never promotes a model worse than the default,
unless the default is over the study's serving budget (study.constraints): then the candidate stays, and the
message says so. The candidate itself is always within the budget (record.best_trial, the finalists' candidates).
`--force` skips the guard with the gate.

With `study.refit`, each side is its refit on every training row (tuner.pipeline.refit): the candidate's refit is
registered (tags `refit.*`) and compared with the V1 baseline's refit, like with like.
With `study.reference`, the registered version is compared the same way with the study's tree-model reference
(tuner.trials.reference) on the same test rows: tags `reference.*` on the version and the parent run, and one line
that says so when the tree model is significantly better. Informative only: it never changes what is promoted."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Dataset

from deepfm_tuner.model.data.frames import check_labels
from deepfm_tuner.model.errors import UserInputError
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.tuner.pipeline.handle import StudyHandle
from deepfm_tuner.tuner.pipeline.refit import refitted_sides
from deepfm_tuner.tuner.registry.gate import AucComparison, delong_test
from deepfm_tuner.tuner.registry.promotion import PromotionResult, promote_policy
from deepfm_tuner.tuner.stores.retry import retry
from deepfm_tuner.tuner.trials.baseline import baseline_trial
from deepfm_tuner.tuner.trials.constraints import within_budget
from deepfm_tuner.tuner.trials.finalists import champion_candidate, trial_candidate
from deepfm_tuner.tuner.trials.names import score_name
from deepfm_tuner.tuner.trials.record import human_epoch
from deepfm_tuner.tuner.trials.reference import NAMES, recorded, reference_scores
from deepfm_tuner.tuner.trials.runs import download_checkpoint


def promote_study(handle: StudyHandle, *, test_frame: pd.DataFrame, force: bool = False, name: str | None = None,
                  test_dataset: Dataset | None = None):
    """Register the study's candidate and move `champion` if it passes the gate on `test_frame`, which
    `test_dataset` names in MLflow (tuner.stores.datasets.part_dataset: the encoded dataset's test part)."""
    study, spec = handle.study, handle.spec
    candidate = champion_candidate(study, spec)  # within the serving budget (study.constraints), as promoted
    base = baseline_trial(study)
    baseline = trial_candidate(base, spec) if base is not None and base.state.name == "COMPLETE" else None
    refit_note = ""
    if spec.refit is not None:  # both sides as trained again on every training row (tuner.pipeline.refit)
        candidate, baseline, refit_note = refitted_sides(study, spec, candidate, baseline)
    best, run_id, value, checkpoint, finalist_tags = (candidate.trial, candidate.run_id, candidate.value,
                                                       candidate.checkpoint, candidate.tags)
    if not checkpoint:
        which = f"the chosen finalist run of trial {best.number}" if spec.finalists else f"best trial {best.number}"
        raise UserInputError(f"{which} of study '{spec.name}' has no saved checkpoint; re-run it with 'deepfm tune' "
                             f"(checkpoints are kept for the best trial only)")
    with tempfile.TemporaryDirectory(prefix="deepfm-promote-") as tmp:
        policy_dir = download_checkpoint(handle.tracking_uri, checkpoint, Path(tmp))
        tags = _version_tags(spec, best.number, value, policy_dir, finalist_tags)
        baseline_dir, note = None, ""
        same_run = baseline is not None and baseline.run_id == run_id  # the candidate is the baseline's own model
        if base is None:
            note = "no V1 baseline trial in this study to compare with"
        elif refit_note:
            note = refit_note
        elif baseline is None or not baseline.checkpoint:
            note = f"V1 baseline trial {base.number} is {base.state.name.lower()} with no checkpoint; not compared"
        elif same_run:
            baseline_dir = policy_dir
            tags["baseline.trial_number"] = str(base.number)
        else:
            try:
                baseline_dir = download_checkpoint(handle.tracking_uri, baseline.checkpoint, Path(tmp) / "baseline")
                tags["baseline.trial_number"] = str(base.number)
            except Exception as exc:  # noqa: BLE001 - the comparison informs; it never blocks a promotion
                note = f"could not download the V1 baseline's checkpoint ({str(exc).splitlines()[0][:200]})"
        guard = None
        if baseline_dir is not None and baseline_dir != policy_dir and not force:
            guard = _baseline_guard(policy_dir, baseline_dir, test_frame, spec.promotion.alpha)
        if guard is not None and not within_budget(base):  # the default is no fallback when it is over budget
            note = (f"baseline guard: the tuned candidate (trial {best.number}) is significantly worse than the V1 "
                    f"baseline on the test rows ({guard.describe()}), but the baseline is over the serving budget "
                    f"(study.constraints); registered the tuned candidate")
            guard = None
        if guard is not None:  # the tuned candidate is significantly worse than the default: promote the default
            tags = _version_tags(spec, base.number, baseline.value, baseline_dir, {
                **baseline.tags, "chosen_by": "baseline_guard", "guard.tuned_trial": str(best.number),
                "guard.auc_diff": f"{guard.diff:.6f}", "guard.p_value": f"{guard.p_value:.3g}",
                "baseline.trial_number": str(base.number)})
            policy_dir, run_id = baseline_dir, baseline.run_id
            note = (f"baseline guard: the tuned candidate (trial {best.number}) is significantly worse than the V1 "
                    f"baseline on the test rows ({guard.describe()}); registered the V1 baseline trial "
                    f"{base.number} instead")
            best = base
        result = promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=test_frame,
                                registered_name=name or spec.model_name, tags=tags, force=force,
                                client=handle.tracker.client, require=spec.promotion.require,
                                alpha=spec.promotion.alpha, baseline_dir=baseline_dir, test_dataset=test_dataset)
        if same_run and result.baseline is not None:
            result = dataclasses.replace(result, baseline_message=(
                f"no significant gain over the V1 baseline: the best trial ({best.number}) is the baseline itself"))
        result = dataclasses.replace(result, baseline_message=note) if note else result
        return _versus_reference(handle, result, policy_dir, test_frame)


def _version_tags(spec, trial_number: int, value: float, policy_dir: Path, extra: dict) -> dict[str, str]:
    metrics = json.loads((policy_dir / "metrics.json").read_text())
    return {
        "study": spec.name,
        "trial_number": str(trial_number),
        score_name(spec.metric): f"{value:.6f}",  # the promoted run's score, under the name its run uses
        **extra,
        **{f"best_epoch_{m}": f"{metrics[m]:.6f}" for m in ("val_auc", "val_logloss") if m != spec.metric},
        # counted from 1, as the runs' best_epoch metric (the policy's metrics.json keeps the 0-based index)
        "best_epoch": str(human_epoch(metrics["best_epoch"])) if "best_epoch" in metrics else "",
        "data_fingerprint": str(metrics.get("data_fingerprint", "")),
    }


def _baseline_guard(candidate_dir: Path, baseline_dir: Path, test_frame: pd.DataFrame, alpha: float):
    """DeLong's comparison of candidate vs V1 baseline on the test rows when the candidate is significantly worse
    (diff < 0, p < alpha), else None (also when either cannot be scored: the guard informs the choice, the
    registry's own checks still run on what is registered)."""
    try:
        candidate = ScoringPolicy.load(candidate_dir)
        labels = check_labels(test_frame, candidate.encoder.schema.label, "promotion test frame")
        comparison = delong_test(labels, np.asarray(candidate.predict(test_frame), dtype=np.float64).reshape(-1),
                                 np.asarray(ScoringPolicy.load(baseline_dir).predict(test_frame),
                                            dtype=np.float64).reshape(-1))
    except Exception:  # noqa: BLE001 - e.g. one class in the test rows: promote_policy reports that itself
        return None
    return comparison if comparison.diff < 0 and comparison.p_value < alpha else None


def _versus_reference(handle: StudyHandle, result: PromotionResult, policy_dir: Path,
                      test_frame: pd.DataFrame) -> PromotionResult:
    """The registered version vs the study's reference on the same test rows (DeLong): tags `reference.*` on the
    version and the parent run, one line in the result."""
    spec = handle.spec
    if spec.reference is None:
        return result
    kind, record = NAMES[spec.reference.type], recorded(handle.study)
    if record is None:
        return dataclasses.replace(result, reference_message=(
            f"no {kind} reference recorded for study '{spec.name}' (it failed: see its run); not compared"))
    try:
        policy = ScoringPolicy.load(policy_dir)
        labels = check_labels(test_frame, policy.encoder.schema.label, "promotion test frame")
        comparison = delong_test(labels, np.asarray(policy.predict(test_frame), dtype=np.float64).reshape(-1),
                                 reference_scores(handle.tracking_uri, record, test_frame))
    except Exception as exc:  # noqa: BLE001 - the comparison informs; it never blocks a promotion
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return dataclasses.replace(result, reference_message=f"could not compare with the {kind} reference ({first})")
    c = comparison
    tags = {"reference.type": spec.reference.type, "reference.test_auc": f"{c.auc_b:.6f}",
            "reference.auc_diff": f"{c.diff:.6f}", "reference.ci_low": f"{c.ci_low:.6f}",
            "reference.ci_high": f"{c.ci_high:.6f}", "reference.p_value": f"{c.p_value:.6g}"}
    for key, value in tags.items():
        retry(handle.tracker.client.set_model_version_tag, result.name, str(result.version), key, value)
    handle.tracker.log_summary(handle.parent_run_id, {
        "reference_auc_diff": c.diff, "reference_ci_low": c.ci_low, "reference_ci_high": c.ci_high,
        "reference_p_value": c.p_value}, tags={**tags, "reference.version": str(result.version)})
    info = {"type": spec.reference.type, "run_id": record["run_id"], "test_auc": c.auc_b, "auc_diff": c.diff,
            "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value}
    return dataclasses.replace(result, reference=info, reference_message=reference_line(
        c, kind, result.version, spec.promotion.alpha))


def reference_line(c: AucComparison, kind: str, version: int, alpha: float) -> str:
    """Version vs reference in one line; when the tree model is significantly better, the advice."""
    versus = f"test AUC {c.auc_a:.4f} vs {c.auc_b:.4f} on the same {c.rows:,} rows: {c.describe()}"
    if c.p_value < alpha and c.diff < 0:
        return (f"the {kind} reference is significantly better than version {version} ({versus}): with these "
                f"features prefer the tree model, or give DeepFM what it is made for (sparse, high-cardinality or "
                f"multi-valued fields, more rows)")
    if c.p_value < alpha:
        return f"DeepFM earned its keep: version {version} beats the {kind} reference ({versus})"
    return f"no significant difference from the {kind} reference ({versus})"

