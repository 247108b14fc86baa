"""Promote a study's best trial: its checkpoint -> registered model version -> `champion` (if it earns it)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from model.errors import UserInputError

from .objective import ATTR_CHECKPOINT, ATTR_RUN_ID, download_checkpoint, score_name
from .runner import StudyHandle
from .tune import best_trial


def promote_study(handle: StudyHandle, *, test_frame: pd.DataFrame, force: bool = False, name: str | None = None):
    from .registry import promote_policy

    study, spec = handle.study, handle.spec
    best = best_trial(study)
    if best is None:
        raise UserInputError(f"study '{spec.name}' has no completed trial to promote; run 'deepfm tune' first")
    checkpoint = best.user_attrs.get(ATTR_CHECKPOINT)
    if not checkpoint:
        raise UserInputError(f"best trial {best.number} of study '{spec.name}' has no saved checkpoint; "
                             f"re-run it with 'deepfm tune' (checkpoints are kept for the best trial only)")
    with tempfile.TemporaryDirectory(prefix="deepfm-promote-") as tmp:
        policy_dir = download_checkpoint(handle.tracking_uri, checkpoint, Path(tmp))
        metrics = json.loads((policy_dir / "metrics.json").read_text())
        tags = {
            "study": spec.name,
            "trial_number": str(best.number),
            score_name(spec.metric): f"{best.value:.6f}",  # the trial's score, under the name its run uses
            **{f"best_epoch_{m}": f"{metrics[m]:.6f}" for m in ("val_auc", "val_logloss") if m != spec.metric},
            "best_epoch": str(metrics.get("best_epoch", "")),  # 0-based, as the runs' best_epoch metric
            "data_fingerprint": str(metrics.get("data_fingerprint", "")),
        }
        return promote_policy(run_id=best.user_attrs[ATTR_RUN_ID], policy_dir=policy_dir, test_frame=test_frame,
                              registered_name=name or spec.model_name, tags=tags, force=force,
                              client=handle.tracker.client)
