"""Warm start: a new study begins with the best configurations of an earlier one (`study.warm_start`).

    study:
      warm_start: {from: OLD_STUDY, top_k: 5, storage: URL}   # storage: default this study's

The source is read before anything is created (a missing source study is a one-line error); its `top_k` best
completed trials (within its serving budget, if it had one) are enqueued once, when the new study is created, each
with only the parameters the new search space holds (the sampler fills the rest; a one-line note names what was
skipped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from deepfm_tuner.model.errors import ConfigError, did_you_mean
from deepfm_tuner.tuner.spec.space import check_params
from deepfm_tuner.tuner.spec.study import StudySpec
from deepfm_tuner.tuner.stores.locations import redact
from deepfm_tuner.tuner.stores.optuna_storage import open_storage, resolve_storage
from deepfm_tuner.tuner.trials.constraints import within_budget
from deepfm_tuner.tuner.trials.names import ATTR_WARM_START


@dataclass
class WarmStartPlan:
    source: str  # the earlier study's name
    storage_url: str
    configs: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (params, "STUDY#TRIAL")
    notes: list[str] = field(default_factory=list)


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plan_warm_start(spec: StudySpec, storage_url: str, storage: optuna.storages.BaseStorage | None = None
                    ) -> WarmStartPlan | None:
    """Read the source study's best configurations (nothing is written); None without `study.warm_start`.

    `storage` is this study's opened storage, reused when the source lives in the same one."""
    warm = spec.warm_start
    if warm is None:
        return None
    given = warm.storage or storage_url
    if given.startswith("sqlite:///") and not Path(given.removeprefix("sqlite:///")).resolve().is_file():
        # checked before resolving: opening a SQLite URL creates the file
        raise ConfigError(f"study.warm_start: no Optuna storage at {redact(given)}; check "
                          f"study.warm_start.storage (default: this study's storage)")
    source_url = resolve_storage(given)
    source_storage = storage if storage is not None and source_url == storage_url else open_storage(source_url)
    try:
        source = optuna.load_study(study_name=warm.source, storage=source_storage)
    except KeyError:
        names = optuna.get_all_study_names(source_storage)
        known = f"; studies there: {', '.join(sorted(names)[:10])}" if names else "; it holds no studies"
        raise ConfigError(f"study.warm_start.from: no study named '{warm.source}' in {redact(source_url)}"
                          f"{did_you_mean(warm.source, names)}{known}") from None
    plan = WarmStartPlan(warm.source, source_url)
    complete = [t for t in source.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.value is not None and within_budget(t)]  # over the source's serving budget: not a best
    maximize = source.direction == optuna.study.StudyDirection.MAXIMIZE
    complete.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
    if not complete:
        plan.notes.append(f"warm start: study '{warm.source}' has no completed trial; nothing to start from")
    for trial in complete[: warm.top_k]:
        valid, skipped = check_params(trial.params, spec.space, spec.training_space)
        label = f"{warm.source}#{trial.number}"
        if skipped:
            shown = ", ".join(f"{k}={_show(v)}" for k, v in skipped.items())
            what = "enqueued the rest" if valid else "nothing left, not enqueued"
            plan.notes.append(f"warm start: trial {trial.number} of '{warm.source}': skipped {shown} "
                              f"(not in this study's search space); {what}")
        if valid:
            plan.configs.append((valid, label))
    return plan


def enqueue_warm_start(study: optuna.Study, plan: WarmStartPlan) -> int:
    """Queue the planned configurations (once: at creation); returns how many were queued (duplicates of a
    queued trial, e.g. of the baseline, are skipped)."""
    before = len(study.get_trials(deepcopy=False))
    for params, label in plan.configs:
        study.enqueue_trial(params, user_attrs={ATTR_WARM_START: label}, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) - before
