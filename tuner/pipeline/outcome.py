"""How a study's parent run ends when a disk fails: the summary completes, the run ends FAILED with the reason.

A full (or read-only) artifact store fails the trials that write checkpoints and the summary's report upload.
`SummaryArtifacts` logs the summary's files and keeps the first disk error instead of crashing half-way;
`end_parent` ends the parent run (FAILED with a `deepfm.failure_reason` tag when a trial or the summary hit a
disk error, else the given status) and then raises one UserInputError line (exit 2 in the CLI).
"""

from __future__ import annotations

from pathlib import Path

from deepfm_tuner.model.errors import UserInputError

from deepfm_tuner.tuner.stores.disks import is_disk_error
from deepfm_tuner.tuner.trials.records import study_disk_failure
from deepfm_tuner.tuner.trials.names import TAG_FAILURE
from deepfm_tuner.tuner.stores.tracking import retry


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
