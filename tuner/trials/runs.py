"""The life of one training run in MLflow, shared by trials and finalist retrains: a run nested under the study's
parent run is opened with its params, tags and data (MLflow dataset inputs), logs its epochs, saves its checkpoint,
and is always closed with the right status (never left RUNNING: an exception fails it with the reason, Ctrl-C closes
it too); a run whose worker died is closed FAILED by whoever notices.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from mlflow.artifacts import download_artifacts
from mlflow.entities import DatasetInput
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from deepfm_tuner.model.config import PolicyConfig, TrainConfig
from deepfm_tuner.tuner.stores.tracking import StudyTracker
from deepfm_tuner.tuner.trials import interrupts
from deepfm_tuner.tuner.trials.names import (
    ATTR_RUN_ID,
    CHECKPOINT_PATH,
    EPOCH_PREFIX,
    TAG_FAILURE,
    TAG_STATE,
    score_name,
)
from deepfm_tuner.tuner.trials.record import human_epoch

INTERRUPTED = "interrupted (KeyboardInterrupt)"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def worker_name() -> str:
    """host:pid of this process (team mode: which machine to look at)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_params(policy: PolicyConfig, control: TrainConfig) -> dict[str, object]:
    """MLflow params: the V1 values under their V1 names, the training control under `training.`."""
    params: dict[str, object] = {k: v for k, v in policy.to_dict().items()}
    params.update({f"training.{k}": v for k, v in control.to_dict().items()})
    return params


def run_tags(fingerprint: str, seed: int, setup: Mapping[str, str]) -> dict[str, str]:
    """Tags every training run carries: the data it trained on, its seed, where and how it trains (`setup`:
    model.train.training_setup, e.g. deepfm.device=cuda, deepfm.optimizer=adam+lazy_adam) and the code's commit."""
    return {"deepfm.data_fingerprint": fingerprint, "deepfm.seed": str(seed), **{f"deepfm.{k}": v for k, v in setup.items()},
            **({"mlflow.source.git.commit": git_commit()} if git_commit() else {})}


@dataclass
class TrainingRun:
    """An open run: what it logs, and the status and state (`deepfm.trial_state`) it will be closed with."""

    tracker: StudyTracker
    run_id: str
    status: str = "FAILED"  # MLflow's: FINISHED, FAILED, KILLED
    state: str = "FAIL"  # ours: COMPLETE, PRUNED, FAIL, KILLED (written with the summary when COMPLETE)

    def log_epoch(self, m) -> None:
        """One epoch's `epoch_*` curves (m: model.train.EpochMetrics)."""
        self.tracker.log_epoch(self.run_id, m.epoch, {f"{EPOCH_PREFIX}{k}": v for k, v in {
            "val_auc": m.val_auc, "val_logloss": m.val_logloss, "train_loss": m.train_loss,
            "seconds": m.seconds, "samples_per_second": m.samples_per_second}.items()})

    def log_result(self, result, metric: str, extra: Mapping[str, float] = ()) -> float:
        """Log a finished training's summary (its score at the best epoch, ...), tagged COMPLETE; returns the score
        (result: model.train.TrainResult). The run ends FINISHED once the caller says `finished()`."""
        value = getattr(result.best, metric)
        self.tracker.log_summary(self.run_id, {
            score_name(metric): value, **{f"best_epoch_{m}": getattr(result.best, m)
                                          for m in ("val_auc", "val_logloss") if m != metric},
            "best_epoch": human_epoch(result.best_epoch), "train_seconds": result.train_seconds,
            "epochs_trained": len(result.history), **dict(extra)},
            tags={"deepfm.stop_reason": result.stop_reason, TAG_STATE: "COMPLETE"})
        return value

    def finished(self) -> None:
        self.status, self.state = "FINISHED", "COMPLETE"

    def fail(self, reason: str) -> None:
        self.tracker.set_tags(self.run_id, {TAG_FAILURE: reason})

    def save_checkpoint(self, policy: PolicyConfig, control: TrainConfig, prepared, result) -> str:
        """Log the trained policy directory as the run's checkpoint; returns its runs:/ URI."""
        from deepfm_tuner.model.policy import ScoringPolicy  # torch: imported by the runs that train, not by status

        with tempfile.TemporaryDirectory(prefix="deepfm-ckpt-") as tmp:
            ScoringPolicy(policy, control, prepared.encoder, result.model, {
                "best_epoch": result.best_epoch, "val_auc": result.best.val_auc,
                "val_logloss": result.best.val_logloss, "data_fingerprint": prepared.fingerprint,
                "history": [m.to_dict() for m in result.history]}).save(Path(tmp) / CHECKPOINT_PATH)
            self.tracker.log_artifact(self.run_id, Path(tmp) / CHECKPOINT_PATH)
        return f"runs:/{self.run_id}/{CHECKPOINT_PATH}"


@contextlib.contextmanager
def training_run(tracker: StudyTracker, parent_run_id: str, run_name: str, role: str, params: Mapping[str, object],
                 tags: Mapping[str, str], *, datasets: Sequence[DatasetInput],
                 interrupted: tuple[str, str] = ("FAILED", "FAIL")) -> Iterator[TrainingRun]:
    """Open a nested run with the data it trains and is scored on (`datasets`: tuner.stores.datasets.run_datasets,
    MLflow's dataset inputs), yield it, close it whatever happens. Ctrl-C (or SystemExit) tags it interrupted and
    closes it with `interrupted` (status, state) before the interrupt goes on; exceptions are the caller's to
    describe (`TrainingRun.fail`) and end the run with its status and state as they stand."""
    run = TrainingRun(tracker, tracker.start_child_run(parent_run_id, run_name, role, params, tags))
    try:
        tracker.log_datasets(run.run_id, datasets)
        yield run
    except Exception:
        raise
    except BaseException:
        interrupts.handled()  # the run is closed below; no second interrupt may cut that short
        run.status, run.state = interrupted
        run.fail(INTERRUPTED)
        raise
    finally:
        if run.state != "COMPLETE":  # a complete run wrote its state with its summary
            tracker.set_tags(run.run_id, {TAG_STATE: run.state})
        tracker.end_run(run.run_id, run.status)


def close_orphan_runs(tracker: StudyTracker, parent_run_id: str, role: str) -> int:
    """Close FAILED, with the reason, the runs of `role` left RUNNING under the study by a process that died
    (kill -9, a lost machine). Call it holding the lock under which such runs are made: then none is live."""
    orphans = tracker.child_runs(parent_run_id, role, status="RUNNING")
    for run in orphans:
        tracker.set_tags(run.info.run_id, {TAG_FAILURE: "its process died before it ended; closed by a later run",
                                           TAG_STATE: "FAIL"})
        tracker.end_run(run.info.run_id, "FAILED")
    return len(orphans)


def close_dead_run(tracker: StudyTracker, trial) -> None:
    """A trial whose worker died (no heartbeat): its run is closed FAILED with the reason before Optuna retries it."""
    run_id = trial.user_attrs.get(ATTR_RUN_ID)
    if run_id:
        tracker.set_tags(run_id, {TAG_FAILURE: "worker died (no heartbeat); retried", TAG_STATE: "FAIL"})
        tracker.end_run(run_id, "FAILED")


def download_checkpoint(tracking_uri: str, checkpoint_uri: str, dst: Path) -> Path:
    """The policy directory a run saved as its checkpoint."""
    dst.mkdir(parents=True, exist_ok=True)
    return Path(download_artifacts(artifact_uri=checkpoint_uri, dst_path=str(dst), tracking_uri=tracking_uri))


def prune_checkpoints(tracker: StudyTracker, keep_run_id: str, run_ids: list[str]) -> int:
    """Delete the checkpoints of runs that are no longer the best (best effort; some stores cannot delete)."""
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
