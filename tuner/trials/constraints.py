"""Serving budgets (`study.constraints`): what each trial costs to serve, whether it fits, and the readers that keep
a trial over budget from ever becoming champion.

Recorded per trial (names in tuner.trials.names):
    parameter_count    every trial, as it starts: model.deepfm.estimate_parameters over the encoder's vocabularies
                       (exact, allocates nothing); a trial user attribute and a metric on its run
    score_latency_ms   with max_latency_ms, every complete trial, after training and before its checkpoint is
                       saved: the median ms of scoring 1,000 raw test rows through the served path
                       (tuner.serving.latency), on the CPU of the machine that trained it; user attribute and
                       metric
    constraints        Optuna's (`Trial.set_constraint`), one per budget and named as in the study file:
                       cost / budget - 1, so <= 0 is within it; the run's tag `deepfm.within_budget`

Optuna does the rest: `study.best_trial` is the best trial within every budget, and TPE and GP model the
constraints to sample fewer configurations over budget (random and qmc sample as before; the budget then only
keeps a trial from becoming champion). The objective sets the constraints as they become known (Optuna 5
deprecates the samplers' `constraints_func` for this; the values are the same), so TPE knows a running trial's
parameter count. The study stays single-objective: a trial over budget trains and is pruned like any other, and
its score and cost show what the budget costs.

A pruned trial stopped before the end: it has its parameter constraint but no latency (TPE judges it by its
parameter count alone); it is never champion anyway. Finalist retrains repeat a candidate's configuration, so
they are neither counted nor timed again. A study's budget is fixed when it is created: each trial was judged
against it, so a resume with other constraints is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from deepfm_tuner.model.config import PolicyConfig
from deepfm_tuner.model.data.encoder import FeatureEncoder
from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.tuner.spec.constraints import ConstraintsSpec
from deepfm_tuner.tuner.trials.names import ATTR_BUDGET, PARAMETER_COUNT, SCORE_LATENCY_MS, TAG_WITHIN_BUDGET
from deepfm_tuner.tuner.trials.record import best_trial

COMPLETE = optuna.trial.TrialState.COMPLETE
SHOWN_OVER = 5  # trials over budget named in one line; the rest are counted


# -- the study's budget ----------------------------------------------------------------------------------------
def record_budget(study: optuna.Study, constraints: ConstraintsSpec | None) -> None:
    """At the study's creation: the budget every trial will be judged against."""
    if constraints is not None:
        study.set_user_attr(ATTR_BUDGET, constraints.to_dict())


def recorded_budget(study: optuna.Study) -> dict[str, Any] | None:
    budget = study.user_attrs.get(ATTR_BUDGET)
    return budget if isinstance(budget, dict) else None


def check_budget(study: optuna.Study, constraints: ConstraintsSpec | None) -> None:
    """A resumed (or joined) study runs under the budget it was created with."""
    declared, recorded = (constraints.to_dict() if constraints else None), recorded_budget(study)
    if declared != recorded:
        raise ConfigError(f"study '{study.study_name}' was created with study.constraints {_shown(recorded)}, but the "
                          f"study file says {_shown(declared)}; its trials were judged against the first: restore it, "
                          f"or use a new study name")


def _shown(budget: Mapping[str, Any] | None) -> str:
    return "none" if not budget else "{" + ", ".join(
        f"{k}: {v}" if isinstance(v, int) else f"{k}: {v:g}" for k, v in budget.items()) + "}"


# -- measuring a trial (the objective) -------------------------------------------------------------------------
class ServingBudget:
    """The study's budget as the objective applies it: `count` as a trial starts, `judge` once it has trained.
    `latency` times a trained policy on the served path (tuner.serving.latency, given by the pipeline: this room
    does not import serving); needed when the budget has max_latency_ms."""

    def __init__(self, constraints: ConstraintsSpec | None, encoder: FeatureEncoder,
                 latency: Callable[[Any], float] | None = None):
        if constraints is not None and constraints.max_latency_ms is not None and latency is None:
            raise ValueError("study.constraints.max_latency_ms needs a latency measurement")
        self.constraints, self.encoder, self.latency = constraints, encoder, latency

    def count(self, trial: optuna.Trial, run, policy: PolicyConfig) -> int:
        """The trial's parameter count: recorded always (it is free), a constraint with max_parameters."""
        from deepfm_tuner.model.deepfm import estimate_parameters  # torch: loaded by the processes that train

        enc = self.encoder
        count = estimate_parameters(enc.categorical_dims, enc.multivalued_dims, len(enc.schema.numeric), policy)
        trial.set_user_attr(PARAMETER_COUNT, count)
        run.tracker.log_summary(run.run_id, {PARAMETER_COUNT: count})
        if self.constraints is not None and self.constraints.max_parameters is not None:
            _constrain(trial, "max_parameters", count / self.constraints.max_parameters - 1)
        return count

    def judge(self, trial: optuna.Trial, run, trained: Callable[[], Any]) -> bool:
        """After training: time `trained()` (the policy with the trial's best weights) when the budget has
        max_latency_ms; whether the trial is within every budget (True without constraints)."""
        if self.constraints is None:
            return True
        metrics: dict[str, float] = {}
        if self.constraints.max_latency_ms is not None:
            milliseconds = self.latency(trained())
            trial.set_user_attr(SCORE_LATENCY_MS, milliseconds)
            metrics[SCORE_LATENCY_MS] = milliseconds
            _constrain(trial, "max_latency_ms", milliseconds / self.constraints.max_latency_ms - 1)
        fits = all(value <= 0 for value in trial.constraints.values())
        run.tracker.log_summary(run.run_id, metrics, tags={TAG_WITHIN_BUDGET: str(fits).lower()})
        return fits


def _constrain(trial: optuna.Trial, name: str, excess: float) -> None:
    if name not in trial.constraints:  # a retried trial inherits its dead attempt's (the same configuration's)
        trial.set_constraint(name, excess)


# -- reading trials (champion choice, summary, status, report) --------------------------------------------------
def within_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """True unless a constraint says the trial is over a budget (a study without constraints: always)."""
    return all(value <= 0 for value in trial.constraints.values())


@dataclass(frozen=True)
class Cost:
    """What a trial costs to serve, as recorded (None: not measured)."""

    parameters: int | None = None
    latency_ms: float | None = None

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> Cost:
        return cls(trial.user_attrs.get(PARAMETER_COUNT), trial.user_attrs.get(SCORE_LATENCY_MS))

    def describe(self, budget: Mapping[str, Any] | None = None) -> str:
        """'61,201 parameters (max 50,000), 3.2 ms': a budget it exceeds is named beside the cost."""
        budget = budget or {}
        parts = []
        if self.parameters is not None:
            limit = budget.get("max_parameters")
            parts.append(f"{self.parameters:,} parameters" + (
                f" (max {limit:,})" if limit is not None and self.parameters > limit else ""))
        if self.latency_ms is not None:
            limit = budget.get("max_latency_ms")
            parts.append(f"{self.latency_ms:.2f} ms" + (
                f" (max {limit:g})" if limit is not None and self.latency_ms > limit else ""))
        return ", ".join(parts) or "cost not recorded"


def best_overall(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete trial within budget or not (`record.best_trial` is the best within it); ties: the
    earlier trial."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(COMPLETE,)) if t.value is not None]
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return max(complete, key=lambda t: (sign * t.value, -t.number), default=None)


def over_budget(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The complete trials over a budget: trained and scored, never champion."""
    return [t for t in study.get_trials(deepcopy=False, states=(COMPLETE,)) if not within_budget(t)]


def budget_metrics(study: optuna.Study, metric: str) -> dict[str, float]:
    """For the parent run: trials over budget, the best trial's cost and, when another trial scored better over
    budget, that trial, its score and its cost (`best_overall_*`)."""
    if recorded_budget(study) is None:
        return {}
    metrics: dict[str, float] = {"trials_over_budget": len(over_budget(study))}
    best, overall = best_trial(study), best_overall(study)
    for prefix, trial in (("best_trial", best), ("best_overall", overall)):
        if trial is None or (prefix == "best_overall" and best is not None and trial.number == best.number):
            continue
        cost = Cost.of(trial)
        if prefix == "best_overall":
            metrics.update({"best_overall_trial": trial.number, f"best_overall_score_{metric}": trial.value})
        metrics.update({f"{prefix}_{name}": value for name, value in (
            (PARAMETER_COUNT, cost.parameters), (SCORE_LATENCY_MS, cost.latency_ms)) if value is not None})
    return metrics


def budget_lines(study: optuna.Study, metric: str) -> list[str]:
    """For `deepfm tune` and `deepfm status`: the budget and the trials over it, the best trial's cost, and the
    best overall with its cost when it is another trial (over budget); nothing for a study without constraints."""
    budget = recorded_budget(study)
    if budget is None:
        return []
    over = over_budget(study)
    named = ", ".join(str(t.number) for t in over[:SHOWN_OVER]) + (
        f" and {len(over) - SHOWN_OVER} more" if len(over) > SHOWN_OVER else "")
    lines = [f"serving budget {_shown(budget)}: " + (
        f"{len(over)} complete trial{'s' if len(over) != 1 else ''} over it, never champion (trial"
        f"{'s' if len(over) != 1 else ''} {named})" if over else "every complete trial is within it")]
    best, overall = best_trial(study), best_overall(study)
    if best is not None:
        lines.append(f"best trial {best.number} within budget: {Cost.of(best).describe(budget)}")
    elif overall is not None:
        lines.append("no complete trial is within the serving budget: nothing can be promoted; loosen "
                     "study.constraints in a new study, or narrow the search space to smaller models")
    if overall is not None and (best is None or overall.number != best.number):
        lines.append(f"best overall trial {overall.number} (over budget): score_{metric} {overall.value:.4f}, "
                     f"{Cost.of(overall).describe(budget)}")
    return lines
