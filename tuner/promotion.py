"""Promote a study's best trial: its checkpoint -> registered model version -> `champion` (if it passes the gate).

With `study.finalists`, the candidate is instead the configuration chosen by the mean over its re-seeded runs
(tuner.finalists): its best retrain's checkpoint is registered, and the version's `finalist.*` tags say so.

The gate (`promotion: {require, alpha}` in the study file) is DeLong's paired AUC test against the current
champion on the same test rows; the study's V1 baseline trial, when its checkpoint exists, is compared the same
way to say whether tuning helped at all."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import pandas as pd

from model.errors import UserInputError

from .baseline import baseline_trial
from .objective import ATTR_CHECKPOINT, ATTR_RUN_ID, download_checkpoint, score_name
from .runner import StudyHandle
from .records import best_trial


def promote_study(handle: StudyHandle, *, test_frame: pd.DataFrame, force: bool = False, name: str | None = None):
    from .registry import promote_policy

    study, spec = handle.study, handle.spec
    best = best_trial(study)
    if best is None:
        raise UserInputError(f"study '{spec.name}' has no completed trial to promote; run 'deepfm tune' first")
    run_id, value, finalist_tags = best.user_attrs.get(ATTR_RUN_ID), best.value, {}
    checkpoint = best.user_attrs.get(ATTR_CHECKPOINT)
    if spec.finalists is not None:
        best, run_id, value, checkpoint, finalist_tags = _finalist_candidate(study, spec)
    if not checkpoint:
        which = f"the chosen finalist run of trial {best.number}" if finalist_tags else f"best trial {best.number}"
        raise UserInputError(f"{which} of study '{spec.name}' has no saved checkpoint; re-run it with 'deepfm tune' "
                             f"(checkpoints are kept for the best trial only)")
    with tempfile.TemporaryDirectory(prefix="deepfm-promote-") as tmp:
        policy_dir = download_checkpoint(handle.tracking_uri, checkpoint, Path(tmp))
        metrics = json.loads((policy_dir / "metrics.json").read_text())
        tags = {
            "study": spec.name,
            "trial_number": str(best.number),
            score_name(spec.metric): f"{value:.6f}",  # the promoted run's score, under the name its run uses
            **finalist_tags,
            **{f"best_epoch_{m}": f"{metrics[m]:.6f}" for m in ("val_auc", "val_logloss") if m != spec.metric},
            "best_epoch": str(metrics.get("best_epoch", "")),  # 0-based, as the runs' best_epoch metric
            "data_fingerprint": str(metrics.get("data_fingerprint", "")),
        }
        baseline_dir, note = None, ""
        base = baseline_trial(study)
        if base is None:
            note = "no V1 baseline trial in this study to compare with"
        elif base.state.name != "COMPLETE" or not base.user_attrs.get(ATTR_CHECKPOINT):
            note = f"V1 baseline trial {base.number} is {base.state.name.lower()} with no checkpoint; not compared"
        elif base.number == best.number and not finalist_tags:  # a finalist retrain is not the baseline's model
            baseline_dir = policy_dir
            tags["baseline.trial_number"] = str(base.number)
        else:
            try:
                baseline_dir = download_checkpoint(handle.tracking_uri, base.user_attrs[ATTR_CHECKPOINT],
                                                   Path(tmp) / "baseline")
                tags["baseline.trial_number"] = str(base.number)
            except Exception as exc:  # noqa: BLE001 - the comparison informs; it never blocks a promotion
                note = f"could not download the V1 baseline's checkpoint ({str(exc).splitlines()[0][:200]})"
        result = promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=test_frame,
                                registered_name=name or spec.model_name, tags=tags, force=force,
                                client=handle.tracker.client, require=spec.promotion.require,
                                alpha=spec.promotion.alpha, baseline_dir=baseline_dir)
        if base is not None and base.number == best.number and result.baseline is not None and not finalist_tags:
            result = dataclasses.replace(result, baseline_message=(
                f"no significant gain over the V1 baseline: the best trial ({best.number}) is the baseline itself"))
        return dataclasses.replace(result, baseline_message=note) if note else result


def _finalist_candidate(study, spec):
    """(the chosen configuration's trial, its best retrain's run id, that run's score, its checkpoint, version tags)
    from the finalists recorded for the study's current top trials."""
    from .finalists import current_result

    result = current_result(study, spec)
    if result is None:
        raise UserInputError(f"the finalists of study '{spec.name}' have not run for its current best trials; run "
                             f"'deepfm tune' or 'deepfm promote' with the study file, which re-train them first")
    chosen = result.chosen
    if chosen is None:
        raise UserInputError(f"no finalist retrain of study '{spec.name}' completed (see deepfm.failure_reason on "
                             f"its finalist runs); remove study.finalists to promote the best single trial")
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == chosen.trial)
    score = score_name(spec.metric)
    tags = {"chosen_by": "finalists_mean", "finalist.of_trial": str(chosen.trial),
            "finalist.seed": str(chosen.best_seed), f"finalist.mean_{score}": f"{chosen.mean:.6f}",
            "finalist.n": str(chosen.n), f"finalist.original_{score}": f"{chosen.original:.6f}"}
    if chosen.std is not None:  # sample std: needs two retrains
        tags[f"finalist.std_{score}"] = f"{chosen.std:.6f}"
    return trial, chosen.best_run_id, chosen.best_value, chosen.checkpoint, tags
