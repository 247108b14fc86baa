"""Finalists over seeds: re-train the study's best configurations with more seeds and choose by the mean.

Seed-to-seed noise (1e-4 to 1e-3 AUC) is as large as many differences between configurations, so one run per
configuration cannot separate close candidates. With `study.finalists: {top_k: K, seeds: S}`, once the trials
have ended (in the process that summarises the study: `deepfm tune`, the `--workers N` coordinator, or
`deepfm promote`), the K best COMPLETE trials by value in the study's direction (the V1 baseline trial may be
one; with study.constraints, only trials within the serving budget) are each trained again S times, exactly as
recorded (`record.trained_config`), with seeds `seed + 1 .. seed + S` (`seed`: the trial's own training seed, so
never the trial's own run again). Every retrain is its own MLflow run (role `finalist`) nested under the study's
parent run.

The champion candidate is the configuration with the best MEAN over its retrains. The original trial's value is
not in the mean: that trial was selected because its value was high (the winner's curse), so counting it would
bias the mean towards the luckiest configuration; it is reported beside the mean. Ties: the better original
value wins. The promoted model is the chosen configuration's best retrain by the validation metric; the best
retrain of every current candidate keeps its checkpoint (at most K), the others are deleted.

This module chooses and reads the record (no training: `deepfm status` uses it), and says what promotion (and a
refit) takes as the champion candidate: the finalists' choice with study.finalists, else the best trial
(`champion_candidate`); tuner.trials.finalist_runs trains the retrains.

Recorded for later readers (`deepfm status`, promotion, a resume):
    study user attr `finalists`  {top_k, seeds, metric, candidates: [trial numbers, best first], retrains: [{trial,
                                  seed, run_id, state COMPLETE|FAIL, value, best_epoch, checkpoint, reason}],
                                  results: [per candidate: trial, run_id, original, mean, std, n, failed, seeds,
                                  values, best_run_id, best_seed, best_value, checkpoint], chosen: trial number
                                  or null, complete}
    parent run                   metrics finalists_chosen_trial, finalists_{mean,std,original}_score_<metric>,
                                  finalists_n; tag deepfm.finalists.chosen_trial; artifact finalists.json (the results)
    each finalist run            the trial's params (training.seed = its seed) and epoch_* curves, score_<metric>,
                                  best_epoch, samples_trained; tags deepfm.finalist_of_trial, deepfm.finalist_of_run_id,
                                  deepfm.finalist_seed, deepfm.trial_state

Resume: each retrain is recorded as it ends, keyed by (trial, seed), and is never trained twice (a failed one, e.g.
diverged, is not retried: it would fail the same way). A study resumed after its finalists ran trains nothing; one
resumed with more trials (or a larger top_k or seeds) trains only what its new top needs and chooses again.
Ctrl-C ends the running retrain's run KILLED; the finished retrains stay recorded. Many processes summarising one
study (team mode) take a lock on the study storage, so each retrain runs once.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import optuna

from deepfm_tuner.model.errors import UserInputError
from deepfm_tuner.tuner.trials.constraints import over_budget, within_budget
from deepfm_tuner.tuner.trials.names import ATTR_CHECKPOINT, ATTR_FINALISTS, ATTR_RUN_ID, score_name
from deepfm_tuner.tuner.trials.record import best_trial, trained_config

ARTIFACT = "finalists.json"


@dataclass(frozen=True)
class Finalist:
    """One candidate configuration: its trial, the trial's own value, and its retrains' values."""

    trial: int
    run_id: str  # the trial's MLflow run
    original: float
    seeds: tuple[int, ...]
    values: tuple[float, ...]  # the completed retrains' score_<metric>, in seed order
    failed: int  # retrains that failed (diverged, ...)
    best_run_id: str | None  # its best retrain's run (the one promoted if this configuration is chosen) ...
    best_seed: int | None  # ... that retrain's seed and score
    best_value: float | None
    checkpoint: str | None  # runs:/<best_run_id>/checkpoint

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None below two retrains."""
        return statistics.stdev(self.values) if self.n >= 2 else None

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "run_id": self.run_id, "original": self.original, "mean": self.mean,
                "std": self.std, "n": self.n, "failed": self.failed, "seeds": list(self.seeds),
                "values": list(self.values), "best_run_id": self.best_run_id, "best_seed": self.best_seed,
                "best_value": self.best_value, "checkpoint": self.checkpoint}


@dataclass(frozen=True)
class FinalistsResult:
    metric: str
    finalists: tuple[Finalist, ...]  # candidates, best original value first
    chosen: Finalist | None  # None when no retrain completed
    trained: int = 0  # retrains run by this call (0: everything was recorded already)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "chosen": None if self.chosen is None else self.chosen.trial,
                "finalists": [f.to_dict() for f in self.finalists]}


@dataclass(frozen=True)
class Candidate:
    """A configuration and the run of it that promotion registers (or compares with): the trial's own run, or the
    chosen finalist's best retrain; `tags` are the version tags saying how it was chosen."""

    trial: optuna.trial.FrozenTrial
    run_id: str
    value: float  # that run's score_<metric>
    checkpoint: str | None  # runs:/<run_id>/checkpoint, if kept
    seed: int  # the seed that run trained with
    tags: dict[str, str]


def trial_candidate(trial: optuna.trial.FrozenTrial, spec) -> Candidate:
    """A trial as trained: its run, score, checkpoint and seed."""
    _, control = trained_config(trial, spec)
    return Candidate(trial, trial.user_attrs.get(ATTR_RUN_ID, ""), trial.value, trial.user_attrs.get(ATTR_CHECKPOINT),
                     (control or spec.training).seed, {})


def champion_candidate(study: optuna.Study, spec) -> Candidate:
    """What promotion registers: with study.finalists the configuration chosen by the mean over its retrains (its
    best retrain), else the best trial; one UserInputError line when there is none yet."""
    best = best_trial(study)
    if best is None and over_budget(study):
        raise UserInputError(f"no complete trial of study '{spec.name}' is within its serving budget "
                             f"(study.constraints); 'deepfm status' shows each trial's cost: tune smaller models in "
                             f"a new study")
    if best is None:
        raise UserInputError(f"study '{spec.name}' has no completed trial to promote; run 'deepfm tune' first")
    if spec.finalists is None:
        return trial_candidate(best, spec)
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
    return Candidate(trial, chosen.best_run_id, chosen.best_value, chosen.checkpoint, chosen.best_seed, tags)


def candidates(study: optuna.Study, top_k: int) -> list[optuna.trial.FrozenTrial]:
    """The `top_k` best COMPLETE trials within the serving budget, in the study's direction; ties: the earlier
    trial first."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value) and within_budget(t)]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(complete, key=lambda t: (sign * t.value, t.number))[:top_k]


def finalist_seeds(trial: optuna.trial.FrozenTrial, spec) -> list[int]:
    """seed + 1 .. seed + seeds, `seed` being the one the trial trained with: deterministic, never the trial's own."""
    _, control = trained_config(trial, spec)
    base = (control or spec.training).seed
    return [base + i for i in range(1, spec.finalists.seeds + 1)]


def recorded(study: optuna.Study) -> dict[str, Any] | None:
    record = study.user_attrs.get(ATTR_FINALISTS)
    return record if isinstance(record, dict) else None


def is_current(record: dict[str, Any] | None, study: optuna.Study, spec) -> bool:
    return bool(record and record.get("complete") and record.get("seeds") == spec.finalists.seeds
                and record.get("metric") == spec.metric
                and record.get("candidates") == [t.number for t in candidates(study, spec.finalists.top_k)])


def better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def results(record: dict[str, Any], trials: list[optuna.trial.FrozenTrial], spec) -> FinalistsResult:
    by_key = {(r["trial"], r["seed"]): r for r in record["retrains"]}
    finalists = []
    for trial in trials:
        seeds = finalist_seeds(trial, spec)
        done = [by_key[(trial.number, s)] for s in seeds if (trial.number, s) in by_key]
        ok = [r for r in done if r["state"] == "COMPLETE"]
        best: dict[str, Any] = {}
        for r in ok:
            if not best or better(r["value"], best["value"], spec.direction):
                best = r
        finalists.append(Finalist(
            trial.number, trial.user_attrs.get(ATTR_RUN_ID, ""), trial.value, tuple(seeds),
            tuple(r["value"] for r in ok), len(done) - len(ok), best_run_id=best.get("run_id"),
            best_seed=best.get("seed"), best_value=best.get("value"), checkpoint=best.get("checkpoint")))
    chosen = None
    for f in finalists:  # candidates are in original order: a tie keeps the better original value
        if f.n and (chosen is None or better(f.mean, chosen.mean, spec.direction)):
            chosen = f
    return FinalistsResult(spec.metric, tuple(finalists), chosen)


def current_result(study: optuna.Study, spec) -> FinalistsResult | None:
    """The recorded finalists of the study's current top trials, or None (not configured, or not run for them)."""
    if spec.finalists is None:
        return None
    record = recorded(study)
    if not is_current(record, study, spec):
        return None
    return results(record, candidates(study, spec.finalists.top_k), spec)


def table_lines(result: FinalistsResult) -> list[str]:
    """A short table for `deepfm tune` / `deepfm status`: one line per candidate, the chosen one marked."""
    score = score_name(result.metric)
    lines = [f"finalists (mean of re-seeded runs; the trial's own value beside it): {score}",
             f"  {'trial':>5}  {'mean':>8}  {'std':>8}  {'n':>3}  {'original':>8}"]
    for f in result.finalists:
        mean = "-" if f.mean is None else f"{f.mean:.4f}"
        std = "-" if f.std is None else f"{f.std:.4f}"
        mark = "  <- chosen" if result.chosen is not None and f.trial == result.chosen.trial else ""
        failed = f"  ({f.failed} failed)" if f.failed else ""
        lines.append(f"  {f.trial:>5}  {mean:>8}  {std:>8}  {f.n:>3}  {f.original:>8.4f}{mark}{failed}")
    if result.chosen is None:
        lines.append("  no finalist retrain completed: nothing chosen")
    return lines
