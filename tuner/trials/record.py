"""What a trial recorded about itself in the Optuna study (user attributes), written and read here only.

    trained      {"policy": V1 scoring_policy mapping, "training": training control}: written at trial start, so
                 `deepfm status`, the summary and promotion show what was trained, never a config rebuilt from
                 Optuna's params plus the study file as it reads today
    training     what its training did (`Training`): the same fields for complete and pruned trials
    failure      {"reason": "OSError: [Errno 28] No space left on device: ...", "disk": true}: why the trial failed;
                 a disk that is full, read-only or over quota stops the study (it will not heal by itself)

Epoch numbers: every epoch a person reads (trial lines, `deepfm train`'s result, stop reasons, pruned trials, the
runs' `best_epoch` metric and the registered version's `best_epoch` tag) is counted from 1, "epoch 1" being the
first; MLflow steps, Optuna report steps and the indices stored for the code (the `training` attribute's
best_epoch, a policy's metrics.json) stay 0-based, so `human_epoch(e) == e + 1`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna

from deepfm_tuner.model.config import PolicyConfig, TrainConfig
from deepfm_tuner.tuner.spec.space import policy_from_params
from deepfm_tuner.tuner.stores.disks import is_disk_error
from deepfm_tuner.tuner.trials.names import ATTR_FAILURE, ATTR_SKIPPED, ATTR_TRAINED, ATTR_TRAINING


@dataclass(frozen=True)
class Training:
    """The `training` attribute: what a trial's training did. Complete trials set seconds and best_epoch; pruned
    ones their score so far and where they stopped (an epoch, or with eval_every a report step)."""

    samples: int = 0  # training rows processed, all epochs
    wall_seconds: float | None = None  # build + epochs + evaluation (platform overhead excluded)
    seconds: float | None = None  # epochs only
    best_epoch: int | None = None  # 0-based
    score: float | None = None  # a pruned trial's study metric at its best epoch so far
    pruned_at_epoch: int | None = None  # 0-based epoch after which it was pruned
    pruned_at_step: int | None = None  # with eval_every: the 0-based report step it was pruned at
    epochs_trained: float | None = None  # with eval_every: epochs of training done when it was pruned

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> "Training":
        stored = trial.user_attrs.get(ATTR_TRAINING)
        if not isinstance(stored, dict):
            return cls()
        return cls(**{f.name: stored[f.name] for f in dataclasses.fields(cls) if f.name in stored})

    def write(self, trial: optuna.Trial) -> None:
        """One write (each attribute is a round trip to the storage); fields never set are not stored."""
        trial.set_user_attr(ATTR_TRAINING, {k: v for k, v in dataclasses.asdict(self).items() if v is not None})


def human_epoch(epoch: int) -> int:
    """A 0-based epoch index (MLflow step, Optuna step, a stored best_epoch) as people count it: the first is 1."""
    return epoch + 1


def record_trained(trial: optuna.Trial, policy: PolicyConfig, control: TrainConfig) -> None:
    trial.set_user_attr(ATTR_TRAINED, {"policy": policy.to_dict(), "training": control.to_dict()})


def trained_config(trial: optuna.trial.FrozenTrial, spec) -> tuple[PolicyConfig, TrainConfig | None]:
    """The V1 config (and training control) the trial trained; trials from before this record existed fall back
    to Optuna's params over the study file's space (and no training control)."""
    recorded = trial.user_attrs.get(ATTR_TRAINED)
    if isinstance(recorded, dict) and "policy" in recorded:
        return PolicyConfig.from_dict(recorded["policy"]), TrainConfig.from_dict(recorded.get("training"))
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
        training = Training.of(trial)
        if training.score is not None or training.pruned_at_step is not None:
            return training.score
        if trial.intermediate_values:  # a study from before scores were stored: the best reported value
            return (max if direction == "maximize" else min)(trial.intermediate_values.values())
    return None


def pruned_at_epoch(trial: optuna.trial.FrozenTrial) -> int | None:
    """The 0-based epoch after which a pruned trial stopped (its last report), else None; None too for a trial
    pruned at a sub-epoch report step (training.eval_every: see `pruned_where`)."""
    if trial.state != optuna.trial.TrialState.PRUNED:
        return None
    training = Training.of(trial)
    if training.pruned_at_step is not None:
        return None
    stored = training.pruned_at_epoch
    return stored if stored is not None else max(trial.intermediate_values, default=None)


def pruned_where(trial: optuna.trial.FrozenTrial) -> str | None:
    """Where a pruned trial stopped, as people read it: "pruned at epoch 2" (1-based), or with eval_every
    "pruned after 1.25 epochs" (training done when a sub-epoch report pruned it); None if not pruned."""
    if trial.state != optuna.trial.TrialState.PRUNED:
        return None
    training = Training.of(trial)
    if training.pruned_at_step is not None:
        epochs = training.epochs_trained if training.epochs_trained is not None else float("nan")
        return f"pruned after {epochs:.2f} epochs"
    epoch = pruned_at_epoch(trial)
    return "pruned" if epoch is None else f"pruned at epoch {human_epoch(epoch)}"
