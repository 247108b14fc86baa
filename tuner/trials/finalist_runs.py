"""Finalist retrains (see tuner.trials.finalists for why and what is recorded): the study's top configurations
trained again with more seeds, each as its own nested run, recorded as they end so a resume trains only what is
missing; processes summarising one study take turns under a lock on its storage."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import optuna

from deepfm_tuner.model.data.tensors import PreparedData
from deepfm_tuner.model.train import train, training_setup
from deepfm_tuner.tuner.stores.datasets import run_datasets
from deepfm_tuner.tuner.stores.disks import is_disk_error
from deepfm_tuner.tuner.stores.locks import creation_lock
from deepfm_tuner.tuner.stores.retry import retry
from deepfm_tuner.tuner.trials.finalists import (
    ARTIFACT,
    FinalistsResult,
    better,
    candidates,
    finalist_seeds,
    is_current,
    recorded,
    results,
)
from deepfm_tuner.tuner.trials.names import (
    ATTR_FINALISTS,
    ATTR_RUN_ID,
    SAMPLES_TRAINED,
    TAG_FINALIST_OF_RUN,
    TAG_FINALIST_OF_TRIAL,
    TAG_FINALIST_SEED,
    TAG_FINALISTS_CHOSEN,
    score_name,
)
from deepfm_tuner.tuner.trials.record import trained_config
from deepfm_tuner.tuner.trials.runs import close_orphan_runs, prune_checkpoints, run_params, run_tags, training_run


def run_finalists(handle, prepared: PreparedData, *, threads: int | None = None,
                  log: Callable[[str], None] = lambda message: None) -> FinalistsResult | None:
    """Re-train the study's top_k complete trials with `seeds` seeds each (only what is not recorded yet), choose
    by the mean, record everything; None when the study has no finalists block or no complete trial."""
    spec, study = handle.spec, handle.study
    if spec.finalists is None:
        return None
    # processes summarising one study (team mode) take turns: the second finds the retrains recorded
    with creation_lock(handle.storage_url, f"deepfm-finalists-{spec.name}", f".{spec.name}.finalists-lock"):
        # a retrain runs only under this lock: one still RUNNING belongs to a process that died (kill -9)
        if closed := close_orphan_runs(handle.tracker, handle.parent_run_id, "finalist"):
            log(f"finalists: closed {closed} retrain run{'s' if closed != 1 else ''} left RUNNING by a process "
                f"that died (FAILED, with the reason)")
        trials = candidates(study, spec.finalists.top_k)
        if not trials:
            return None
        record = recorded(study)
        if is_current(record, study, spec):
            return results(record, trials, spec)
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
        result = results(record, trials, spec)
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
    tags = {TAG_FINALIST_OF_TRIAL: str(trial.number), TAG_FINALIST_SEED: str(seed),
            TAG_FINALIST_OF_RUN: trial.user_attrs.get(ATTR_RUN_ID, ""),
            **run_tags(prepared.fingerprint, seed, training_setup(control))}
    with training_run(tracker, handle.parent_run_id, f"finalist-{trial.number}-seed-{seed}", "finalist",
                      run_params(policy, control), tags, datasets=run_datasets(prepared),
                      interrupted=("KILLED", "KILLED")) as run:
        entry: dict[str, Any] = {"trial": trial.number, "seed": seed, "run_id": run.run_id, "state": "FAIL"}
        try:
            result = train(prepared, policy, control, on_epoch=run.log_epoch, select=spec.metric)
            value = run.log_result(result, spec.metric, {SAMPLES_TRAINED: result.samples})  # tune_rows: the sample
            entry.update(state="COMPLETE", value=value, best_epoch=result.best_epoch)
            previous = _best_with_checkpoint(record, trial.number, spec.direction)
            if previous is None or better(value, previous["value"], spec.direction):  # the candidate's best so far
                entry["checkpoint"] = run.save_checkpoint(policy, control, prepared, result)
                if previous is not None:
                    _delete_checkpoint(handle, previous)
            run.finished()
        except Exception as exc:  # noqa: BLE001 - recorded on the run and in the study; the other retrains go on
            entry.update(state="FAIL", reason=" ".join(f"{type(exc).__name__}: {exc}".split())[:1000])
            entry.pop("checkpoint", None)
            run.fail(entry["reason"])
        return entry


def _best_with_checkpoint(record: dict[str, Any], trial: int, direction: str) -> dict[str, Any] | None:
    best = None
    for r in record["retrains"]:
        if r["trial"] == trial and r.get("checkpoint") and (best is None or better(r["value"], best["value"],
                                                                                    direction)):
            best = r
    return best


def _delete_checkpoint(handle, entry: dict[str, Any]) -> None:
    """Best effort (some stores cannot delete); the record no longer points at it either way."""
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
