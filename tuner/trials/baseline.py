"""The V1 baseline trial: every study first evaluates the seed V1 config, so "did tuning pay?" has an answer.

Tunable hyperparameters take the V1 default (16, [128, 64, 32], relu, 0.2, 0.001) where the search space holds
it, else the closest valid value (noted on the trial); fixed ones stay as the study file fixes them. Tuned
training knobs take the training control's defaults the same way (embedding_l2 0, weight_decay 0, batch_size
4096). The trial is enqueued once, when the study is created, and counts towards `n_trials` like any other.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import optuna

from deepfm_tuner.model.config import PolicyConfig, TrainConfig
from deepfm_tuner.tuner.spec.space import (
    TRAINING_PREFIX,
    Choices,
    Fixed,
    Layers,
    Range,
    Spec,
    check_params,
    layers_label,
    zero_param,
)
from deepfm_tuner.tuner.trials.names import ATTR_BASELINE, ATTR_BASELINE_NOTE

V1_DEFAULT = PolicyConfig()
TRAINING_DEFAULT = TrainConfig()


def _default(name: str) -> Any:
    if name.startswith(TRAINING_PREFIX):
        return getattr(TRAINING_DEFAULT, name.removeprefix(TRAINING_PREFIX))
    return getattr(V1_DEFAULT, name)


def _closest_number(value: float, options) -> Any:
    return min(options, key=lambda o: abs(float(o) - value))  # min keeps the first of equally close options


def _layers_distance(a, b) -> float:
    """Depth difference plus, layer by layer, how many doublings apart the widths are."""
    return abs(len(a) - len(b)) + sum(abs(math.log2(x / y)) for x, y in zip(a, b))


def _in_range(value: float, spec: Range) -> float:
    clipped = min(max(value, spec.low), spec.high)
    step = spec.step if spec.step is not None else (1 if spec.integer else None)
    if step is not None:  # Optuna's grid is low + k * step
        k = round((clipped - spec.low) / step)
        clipped = spec.low + k * step
        if clipped > spec.high + 1e-12:
            clipped -= step
        clipped = round(clipped, 12)
    return int(round(clipped)) if spec.integer else float(clipped)


def baseline_params(space: Mapping[str, Spec], training_space: Mapping[str, Spec] | None = None
                    ) -> tuple[dict[str, Any], list[str]]:
    """(Optuna params that make `suggest_policy` yield the V1 config within `space` (and `suggest_training` the
    default training control within `training_space`), notes on any adjustment)."""
    params: dict[str, Any] = {}
    notes: list[str] = []
    for name, spec in {**space, **(training_space or {})}.items():
        default = _default(name)
        if isinstance(spec, Fixed):
            continue
        if isinstance(spec, Choices):
            if isinstance(spec.values[0], (list, tuple)):
                chosen = tuple(default) if tuple(default) in spec.values else \
                    min(spec.values, key=lambda v: _layers_distance(v, default))
                params[name] = layers_label(chosen)
            elif default in spec.values:
                chosen = params[name] = default
            elif isinstance(default, str):
                chosen = params[name] = spec.values[0]
            else:
                chosen = params[name] = _closest_number(default, spec.values)
        elif isinstance(spec, Range) and spec.zero:
            params[zero_param(name)] = default == 0
            params[name] = _in_range(float(default), spec)
            chosen = 0 if default == 0 else params[name]
        elif isinstance(spec, Range):
            chosen = params[name] = _in_range(float(default), spec)
        else:  # Layers: depth, then one width per layer, each within its range
            assert isinstance(spec, Layers)
            depth = min(max(len(default), spec.depth[0]), spec.depth[1])
            widths = [default[min(i, len(default) - 1)] for i in range(depth)]
            chosen = tuple(min(max(w, spec.width[0]), spec.width[1]) for w in widths)
            params[f"{name}.depth"] = depth
            params.update({f"{name}.l{i}": w for i, w in enumerate(chosen)})
        same = tuple(chosen) == tuple(default) if isinstance(default, tuple) else chosen == default
        if not same:
            shown = list(default) if isinstance(default, tuple) else default
            used = list(chosen) if isinstance(chosen, tuple) else chosen
            notes.append(f"{name}: {'default' if name.startswith(TRAINING_PREFIX) else 'V1 default'} {shown} is outside the search space, baseline uses {used}")
    valid, invalid = check_params(params, space, training_space)
    assert not invalid, f"baseline params outside the space: {invalid}"  # a bug here, never the user's input
    return valid, notes


def enqueue_baseline(study: optuna.Study, space: Mapping[str, Spec],
                     training_space: Mapping[str, Spec] | None = None) -> list[str]:
    """Queue the baseline as the study's next trial (once: at creation); returns the adjustment notes."""
    params, notes = baseline_params(space, training_space)
    attrs: dict[str, Any] = {ATTR_BASELINE: True}
    if notes:
        attrs[ATTR_BASELINE_NOTE] = "; ".join(notes)
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
    return notes


def is_baseline(trial: optuna.trial.FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(ATTR_BASELINE))


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed baseline trial (a retried one counts), else the latest baseline trial in any state."""
    trials = [t for t in study.get_trials(deepcopy=False) if is_baseline(t)]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        return complete[0]
    return trials[-1] if trials else None


def lift_over_baseline(study: optuna.Study) -> tuple[float, optuna.trial.FrozenTrial] | None:
    """(best value - baseline value, signed so that > 0 means tuning improved the metric; the baseline trial),
    or None when there is no completed baseline or best trial."""
    base = baseline_trial(study)
    if base is None or base.state != optuna.trial.TrialState.COMPLETE or base.value is None:
        return None
    try:
        best = study.best_value
    except ValueError:
        return None
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return (best - base.value if maximize else base.value - best), base


def describe_lift(study: optuna.Study, metric: str) -> str:
    """One line for `deepfm status` / `deepfm tune`."""
    lift = lift_over_baseline(study)
    if lift is None:
        base = baseline_trial(study)
        if base is None:
            return "no V1 baseline trial in this study (created before baselines were added)"
        return f"V1 baseline trial {base.number} is {base.state.name.lower()}: no lift to report yet"
    value, base = lift
    return f"V1 baseline trial {base.number}: score_{metric} {base.value:.4f}; lift of the best over it: {value:+.4f}"
