"""Finalists over seeds: re-train the study's best configurations with more seeds and choose by the mean.

Seed-to-seed noise (1e-4 to 1e-3 AUC) is as large as many differences between configurations, so one run per
configuration cannot separate close candidates. With `study.finalists: {top_k: K, seeds: S}`, once the trials
have ended (in the process that summarises the study: `deepfm tune`, the `--workers N` coordinator, or
`deepfm promote`), the K best COMPLETE trials by value in the study's direction (the V1 baseline trial may be
one) are each trained again S times, exactly as recorded (`records.trained_config`), with seeds
`seed + 1 .. seed + S` (`seed`: the trial's own training seed, so never the trial's own run again). Every retrain
is its own MLflow run (role `finalist`) nested under the study's parent run.

The champion candidate is the configuration with the best MEAN over its retrains. The original trial's value is
not in the mean: that trial was selected because its value was high (the winner's curse), so counting it would
bias the mean towards the luckiest configuration; it is reported beside the mean. Ties: the better original
value wins. The promoted model is the chosen configuration's best retrain by the validation metric; the best
retrain of every current candidate keeps its checkpoint (at most K), the others are deleted.

Recorded for later readers (`deepfm status`, promotion, a resume):
    study user attr `finalists`  {top_k, seeds, metric, candidates: [trial numbers, best first], retrains: [{trial,
                                  seed, run_id, state COMPLETE|FAIL, value, best_epoch, checkpoint, reason}],
                                  results: [per candidate: trial, run_id, original, mean, std, n, failed, seeds,
                                  values, best_run_id, best_seed, best_value, checkpoint], chosen: trial number
                                  or null, complete}
    parent run                   metrics finalists_chosen_trial, finalists_{mean,std,original}_score_<metric>,
                                  finalists_n; tag deepfm.finalists.chosen_trial; artifact finalists.json (the results)
    each finalist run            the trial's params (training.seed = its seed) and epoch_* curves, score_<metric>,
                                  best_epoch; tags deepfm.finalist_of_trial, deepfm.finalist_of_run_id,
                                  deepfm.finalist_seed, deepfm.trial_state

Resume: each retrain is recorded as it ends, keyed by (trial, seed), and is never trained twice (a failed one, e.g.
diverged, is not retried: it would fail the same way). A study resumed after its finalists ran trains nothing; one
resumed with more trials (or a larger top_k or seeds) trains only what its new top needs and chooses again.
Ctrl-C ends the running retrain's run KILLED; the finished retrains stay recorded. Many processes summarising one
study (team mode) take a lock on the study storage, so each retrain runs once.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from deepfm_tuner.model.data.tensors import PreparedData
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import train

from deepfm_tuner.tuner.trials import interrupts
from deepfm_tuner.tuner.stores.disks import is_disk_error
from deepfm_tuner.tuner.stores.locks import creation_lock
from deepfm_tuner.tuner.trials.names import (ATTR_FINALISTS, ATTR_RUN_ID, TAG_FAILURE, TAG_FINALIST_OF_RUN, TAG_FINALISTS_CHOSEN,
                    TAG_STATE)
from deepfm_tuner.tuner.trials.objective import CHECKPOINT_PATH, EPOCH_PREFIX, _save_checkpoint, score_name, trial_params
from deepfm_tuner.tuner.trials.records import trained_config
from deepfm_tuner.tuner.stores.tracking import git_commit, retry

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


def candidates(study: optuna.Study, top_k: int) -> list[optuna.trial.FrozenTrial]:
    """The `top_k` best COMPLETE trials in the study's direction; ties: the earlier trial first."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
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


def _is_current(record: dict[str, Any] | None, study: optuna.Study, spec) -> bool:
    return bool(record and record.get("complete") and record.get("seeds") == spec.finalists.seeds
                and record.get("metric") == spec.metric
                and record.get("candidates") == [t.number for t in candidates(study, spec.finalists.top_k)])


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def _results(record: dict[str, Any], trials: list[optuna.trial.FrozenTrial], spec) -> FinalistsResult:
    by_key = {(r["trial"], r["seed"]): r for r in record["retrains"]}
    finalists = []
    for trial in trials:
        seeds = finalist_seeds(trial, spec)
        done = [by_key[(trial.number, s)] for s in seeds if (trial.number, s) in by_key]
        ok = [r for r in done if r["state"] == "COMPLETE"]
        best: dict[str, Any] = {}
        for r in ok:
            if not best or _better(r["value"], best["value"], spec.direction):
                best = r
        finalists.append(Finalist(
            trial.number, trial.user_attrs.get(ATTR_RUN_ID, ""), trial.value, tuple(seeds),
            tuple(r["value"] for r in ok), len(done) - len(ok), best_run_id=best.get("run_id"),
            best_seed=best.get("seed"), best_value=best.get("value"), checkpoint=best.get("checkpoint")))
    chosen = None
    for f in finalists:  # candidates are in original order: a tie keeps the better original value
        if f.n and (chosen is None or _better(f.mean, chosen.mean, spec.direction)):
            chosen = f
    return FinalistsResult(spec.metric, tuple(finalists), chosen)


def current_result(study: optuna.Study, spec) -> FinalistsResult | None:
    """The recorded finalists of the study's current top trials, or None (not configured, or not run for them)."""
    if spec.finalists is None:
        return None
    record = recorded(study)
    if not _is_current(record, study, spec):
        return None
    return _results(record, candidates(study, spec.finalists.top_k), spec)


def run_finalists(handle, prepared: PreparedData, *, threads: int | None = None,
                  log: Callable[[str], None] = lambda message: None) -> FinalistsResult | None:
    """Re-train the study's top_k complete trials with `seeds` seeds each (only what is not recorded yet), choose
    by the mean, record everything; None when the study has no finalists block or no complete trial."""
    spec, study = handle.spec, handle.study
    if spec.finalists is None:
        return None
    # processes summarising one study (team mode) take turns: the second finds the retrains recorded
    with creation_lock(handle.storage_url, f"deepfm-finalists-{spec.name}", f".{spec.name}.finalists-lock"):
        trials = candidates(study, spec.finalists.top_k)
        if not trials:
            return None
        record = recorded(study)
        if _is_current(record, study, spec):
            return _results(record, trials, spec)
        if not record or record.get("metric") != spec.metric:
            record = {"retrains": []}
        record.update(top_k=spec.finalists.top_k, seeds=spec.finalists.seeds, metric=spec.metric,
                      candidates=[t.number for t in trials], complete=False)
        done = {(r["trial"], r["seed"]) for r in record["retrains"]}
        todo = [(t, s) for t in trials for s in finalist_seeds(t, spec) if (t.number, s) not in done]
        if todo:
            log(f"finalists: re-training the {len(trials)} best configuration{'s' if len(trials) != 1 else ''} "
                f"(trials {', '.join(str(t.number) for t in trials)}) with {spec.finalists.seeds} more "
                f"seed{'s' if spec.finalists.seeds != 1 else ''} each: {len(todo)} run{'s' if len(todo) != 1 else ''}")
        for index, (trial, seed) in enumerate(todo, 1):
            entry = _retrain(handle, prepared, trial, seed, threads, record)
            record["retrains"].append(entry)
            retry(study.set_user_attr, ATTR_FINALISTS, record)  # a Ctrl-C later keeps what finished
            shown = f"{score_name(spec.metric)} {entry['value']:.4f}" if entry["state"] == "COMPLETE" else \
                f"failed: {entry.get('reason', '')[:200]}"
            log(f"finalists: {index}/{len(todo)} trial {trial.number} seed {seed}: {shown}")
        _prune_checkpoints(handle, record)
        result = _results(record, trials, spec)
        record.update(results=[f.to_dict() for f in result.finalists],
                      chosen=None if result.chosen is None else result.chosen.trial, complete=True)
        retry(study.set_user_attr, ATTR_FINALISTS, record)
        _log_to_parent(handle, result, log)
        return FinalistsResult(result.metric, result.finalists, result.chosen, trained=len(todo))


def _retrain(handle, prepared: PreparedData, trial: optuna.trial.FrozenTrial, seed: int, threads: int | None,
             record: dict[str, Any]) -> dict[str, Any]:
    """One retrain of `trial`'s configuration with `seed`, as its own nested run; returns its record entry."""
    spec, tracker = handle.spec, handle.tracker
    policy, control = trained_config(trial, spec)
    control = (control or spec.training).replace(seed=seed, threads=threads or (control or spec.training).threads)
    tags = {TAG_FINALIST_OF_RUN: trial.user_attrs.get(ATTR_RUN_ID, ""), "deepfm.seed": str(seed),
            "deepfm.data_fingerprint": prepared.fingerprint,
            **({"mlflow.source.git.commit": git_commit()} if git_commit() else {})}
    run_id = tracker.start_finalist_run(handle.parent_run_id, trial.number, seed, trial_params(policy, control), tags)
    entry: dict[str, Any] = {"trial": trial.number, "seed": seed, "run_id": run_id, "state": "FAIL"}
    status = "FAILED"
    try:
        def report(m) -> None:
            tracker.log_epoch(run_id, m.epoch, {f"{EPOCH_PREFIX}{k}": v for k, v in {
                "val_auc": m.val_auc, "val_logloss": m.val_logloss, "train_loss": m.train_loss,
                "seconds": m.seconds, "samples_per_second": m.samples_per_second}.items()})

        result = train(prepared, policy, control, on_epoch=report, select=spec.metric)
        value = getattr(result.best, spec.metric)
        tracker.log_summary(run_id, {
            score_name(spec.metric): value, **{f"best_epoch_{m}": getattr(result.best, m)
                                               for m in ("val_auc", "val_logloss") if m != spec.metric},
            "best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
            "epochs_trained": len(result.history)}, tags={"deepfm.stop_reason": result.stop_reason,
                                                          TAG_STATE: "COMPLETE"})
        entry.update(state="COMPLETE", value=value, best_epoch=result.best_epoch)
        previous = _best_with_checkpoint(record, trial.number, spec.direction)
        if previous is None or _better(value, previous["value"], spec.direction):  # the candidate's best so far
            _save_checkpoint(tracker, run_id, ScoringPolicy(policy, control, prepared.encoder, result.model, {
                "best_epoch": result.best_epoch, "val_auc": result.best.val_auc,
                "val_logloss": result.best.val_logloss, "data_fingerprint": prepared.fingerprint,
                "history": [m.to_dict() for m in result.history]}))
            entry["checkpoint"] = f"runs:/{run_id}/{CHECKPOINT_PATH}"
            if previous is not None:
                _delete_checkpoint(handle, previous)
        status = "FINISHED"
        return entry
    except Exception as exc:  # noqa: BLE001 - recorded on the run and in the study; the other retrains go on
        entry.update(state="FAIL", reason=" ".join(f"{type(exc).__name__}: {exc}".split())[:1000])
        entry.pop("checkpoint", None)
        tracker.set_tags(run_id, {TAG_FAILURE: entry["reason"], TAG_STATE: "FAIL"})
        return entry
    except BaseException:  # Ctrl-C / SystemExit: the run must not stay RUNNING
        interrupts.handled()
        status = "KILLED"
        tracker.set_tags(run_id, {TAG_FAILURE: "interrupted (KeyboardInterrupt)", TAG_STATE: "KILLED"})
        raise
    finally:
        tracker.end_run(run_id, status)


def _best_with_checkpoint(record: dict[str, Any], trial: int, direction: str) -> dict[str, Any] | None:
    best = None
    for r in record["retrains"]:
        if r["trial"] == trial and r.get("checkpoint") and (best is None or _better(r["value"], best["value"],
                                                                                    direction)):
            best = r
    return best


def _delete_checkpoint(handle, entry: dict[str, Any]) -> None:
    """Best effort (some stores cannot delete); the record no longer points at it either way."""
    from deepfm_tuner.tuner.trials.objective import prune_checkpoints

    prune_checkpoints(handle.tracker, "", [entry["run_id"]])
    entry.pop("checkpoint", None)


def _prune_checkpoints(handle, record: dict[str, Any]) -> None:
    """Keep the best retrain's checkpoint of each current candidate only (a trial that left the top loses its)."""
    keep = set(record["candidates"])
    for entry in record["retrains"]:
        if entry.get("checkpoint") and entry["trial"] not in keep:
            _delete_checkpoint(handle, entry)


def _log_to_parent(handle, result: FinalistsResult, log: Callable[[str], None]) -> None:
    tracker, score = handle.tracker, score_name(result.metric)
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    chosen = result.chosen
    if chosen is not None:
        metrics = {"finalists_chosen_trial": chosen.trial, f"finalists_mean_{score}": chosen.mean,
                   f"finalists_original_{score}": chosen.original, "finalists_n": chosen.n}
        if chosen.std is not None:
            metrics[f"finalists_std_{score}"] = chosen.std
        tags[TAG_FINALISTS_CHOSEN] = str(chosen.trial)
    tracker.log_summary(handle.parent_run_id, metrics, tags=tags)
    with tempfile.TemporaryDirectory(prefix="deepfm-finalists-") as tmp:
        path = Path(tmp) / ARTIFACT
        path.write_text(json.dumps(result.to_dict(), indent=2))
        try:
            tracker.log_artifact(handle.parent_run_id, path)
        except Exception as exc:  # a full artifact disk: the study attribute still holds the same table
            if not is_disk_error(exc):
                raise
            log(f"finalists: could not store {ARTIFACT} on the parent run ({exc}); 'deepfm status' shows the table")


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
