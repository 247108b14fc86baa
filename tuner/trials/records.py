"""What a trial recorded about itself in the Optuna study (user attributes), and what a study's failures say.

    trained      {"policy": V1 scoring_policy mapping, "training": training control}: written at trial start, so
                 `deepfm status`, the summary and promotion show what was trained, never a config rebuilt from
                 Optuna's params plus the study file as it reads today
    failure      {"reason": "OSError: [Errno 28] No space left on device: ...", "disk": true}: why the trial failed;
                 a disk that is full, read-only or over quota stops the study (it will not heal by itself)
"""

from __future__ import annotations

from typing import Any

import optuna

from deepfm_tuner.model.config import PolicyConfig, TrainConfig

from deepfm_tuner.tuner.stores.disks import is_disk_error
from deepfm_tuner.tuner.trials.names import ATTR_FAILURE, ATTR_TRAINED  # noqa: F401 - importable from here as before


def record_trained(trial: optuna.Trial, policy: PolicyConfig, control: TrainConfig) -> None:
    trial.set_user_attr(ATTR_TRAINED, {"policy": policy.to_dict(), "training": control.to_dict()})


def trained_config(trial: optuna.trial.FrozenTrial, spec) -> tuple[PolicyConfig, TrainConfig | None]:
    """The V1 config (and training control) the trial trained; trials from before this record existed fall back
    to Optuna's params over the study file's space (and no training control)."""
    recorded = trial.user_attrs.get(ATTR_TRAINED)
    if isinstance(recorded, dict) and "policy" in recorded:
        return PolicyConfig.from_dict(recorded["policy"]), TrainConfig.from_dict(recorded.get("training"))
    from deepfm_tuner.tuner.spec.space import policy_from_params

    return policy_from_params(trial.params, spec.space), None


def record_failure(trial: optuna.Trial, exc: BaseException) -> str:
    """Store why the trial failed (best effort); returns the one-line reason."""
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]
    try:
        trial.set_user_attr(ATTR_FAILURE, {"reason": reason, "disk": is_disk_error(exc)})
    except Exception:  # noqa: BLE001 - the storage itself may be the full disk; the trial fails anyway
        pass
    return reason


def disk_failure(trial: optuna.trial.FrozenTrial) -> str | None:
    failure: Any = trial.user_attrs.get(ATTR_FAILURE)
    return failure.get("reason") if isinstance(failure, dict) and failure.get("disk") else None


def study_disk_failure(study: optuna.Study) -> tuple[int, str] | None:
    """(trial number, reason) of the latest trial that failed on a full, read-only or forbidden disk, unless a
    trial finished after it (the disk was freed: a resumed study is healthy again)."""
    states = optuna.trial.TrialState
    for trial in reversed(study.get_trials(deepcopy=False)):
        if trial.state in (states.COMPLETE, states.PRUNED):
            return None
        reason = disk_failure(trial) if trial.state == states.FAIL else None
        if reason:
            return trial.number, reason
    return None


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None
