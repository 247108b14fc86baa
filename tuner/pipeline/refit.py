"""Refit: the best configurations trained again on every training row, after the trials and the finalists.

With `data.tune_rows` the trials (and finalist retrains) train on a sample of the training rows; a model trained
on all of them should score better, so with `study.refit` (on by default when tune_rows is set) the champion
candidate (`finalists.champion_candidate`: the finalists' choice, else the best trial) and the next best trials,
`refit.candidates` in all, are trained once more on every training row, each with its own configuration and
seed, early-stopped on the validation split, up to `refit.max_epochs` with `refit.patience` (default: the study's
training values). So that the gate compares like with like, the V1 baseline trial is refit the same way (role
`refit_baseline`; a candidate's own refit when it is one of them). The refit with the best validation score, the
baseline's included (as a study on every row chooses among all its trials), is the chosen one: a configuration
that won on a small sample (strong regularisation, a high learning rate) need not be the best on every row.
Promotion registers the chosen refit and compares it with the baseline's
(tuner.pipeline.promotion); a refit that would repeat its run exactly (the trials trained on every row, with the
refit's epochs and patience) is not trained, and the run itself is registered.

Recorded for later readers (promotion, `deepfm status`, the report, a resume):
    study user attr `refit`  {"candidates": [entry, ...] (best-ranked first), "refit": the chosen entry,
                             "refit_baseline": entry}; entry: {role, of_trial, of_run_id, seed,
                             max_epochs, patience, rows (training rows), trial_rows (the trials' rows), state
                             COMPLETE|FAIL|SKIPPED, run_id, value, sample_value (the repeated run's score),
                             samples, seconds, wall_seconds, best_epoch (0-based), epochs, checkpoint, reason}
    each refit run           (nested, role refit or refit_baseline) the configuration's params with the refit's
                             max_epochs, patience and seed, epoch_* curves, score_<metric>, sample_score_<metric>,
                             samples_trained; tags deepfm.refit_of_trial, deepfm.refit_of_run_id,
                             deepfm.refit_rows, deepfm.refit_samples, deepfm.refit_rank (a candidate's
                             rank on the sample), deepfm.refit_chosen (on the chosen one, of several)
    parent run               metrics refit_score_<metric>, refit_baseline_score_<metric>

Interrupts and crashes: an entry is written when its run ends (complete, or failed with the reason); Ctrl-C ends
the running refit's run KILLED and records nothing, a process killed outright leaves its run RUNNING, closed FAILED
with the reason by the next `deepfm tune` / `deepfm promote` (which then trains the refit again): a half-trained
refit is never recorded, so never registered. Processes summarising one study (team mode) take turns under a lock
on its storage, so the refit trains once. A refit that failed is tried again by the next run.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna

from deepfm_tuner.model.data.tensors import PreparedData
from deepfm_tuner.model.errors import UserInputError
from deepfm_tuner.tuner.spec.study import METRICS
from deepfm_tuner.tuner.stores.retry import retry
from deepfm_tuner.tuner.trials.baseline import baseline_trial
from deepfm_tuner.tuner.trials.finalists import Candidate, champion_candidate, trial_candidate
from deepfm_tuner.tuner.trials.finalists import candidates as best_trials
from deepfm_tuner.tuner.trials.names import (
    ATTR_REFIT,
    SAMPLES_TRAINED,
    TAG_REFIT_OF_RUN,
    TAG_REFIT_CHOSEN,
    TAG_REFIT_OF_TRIAL,
    TAG_REFIT_RANK,
    TAG_REFIT_ROWS,
    TAG_REFIT_SAMPLES,
    sample_score_name,
    score_name,
)
from deepfm_tuner.tuner.trials.record import human_epoch, trained_config

ROLES = ("refit", "refit_baseline")


@dataclass(frozen=True)
class RefitTask:
    """The refit being trained, for a progress view: its role, the trial it repeats, its rows and epochs."""

    role: str
    trial: int
    rows: int
    max_epochs: int


def settings(spec) -> tuple[int, int]:
    """(max_epochs, patience) of the study's refits: study.refit's, else the study's training values."""
    refit = spec.refit
    return (refit.max_epochs or spec.training.max_epochs,
            spec.training.patience if refit.patience is None else refit.patience)


def recorded(study: optuna.Study) -> dict[str, Any]:
    record = study.user_attrs.get(ATTR_REFIT)
    return record if isinstance(record, dict) else {}


def _current(entry: dict[str, Any] | None, side: Candidate, spec) -> bool:
    """The entry is the refit of this run, with the study's refit settings."""
    return bool(entry) and (entry["of_run_id"], entry["seed"], (entry["max_epochs"], entry["patience"])) == (
        side.run_id, side.seed, settings(spec))


# -- training the refits ---------------------------------------------------------------------------------
def refit_choices(study: optuna.Study, spec, first: Candidate | None = None) -> list[Candidate]:
    """The configurations refit on every row, best first: the champion candidate (`first`; the finalists' choice,
    else the best trial), then the next best trials within the serving budget, `refit.candidates` in all. One
    UserInputError line when there is no candidate yet."""
    first = first or champion_candidate(study, spec)
    rest = [trial_candidate(t, spec) for t in best_trials(study, spec.refit.candidates)
            if t.number != first.trial.number]
    return [first, *rest][:spec.refit.candidates]


def chosen_entry(entries: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The refit of the pool (`refit_pool`) that promotion registers: the best score on the validation split (a
    refit not needed scores as its run); the earlier in the pool on a tie."""
    sign = 1 if METRICS[metric] == "maximize" else -1
    scored = [e for e in entries if e["state"] in ("COMPLETE", "SKIPPED")]
    if len(scored) < len(entries):  # a failed refit: promotion names it (the choice must not hang on a failure)
        return next(e for e in entries if e["state"] == "FAIL")
    return max(scored, key=lambda e: (sign * e.get("value", e["sample_value"]), -entries.index(e)))


def refit_pool(candidates: list[dict[str, Any]], base: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The refits the choice is among: the candidates', best-ranked first, then the V1 baseline's when it is
    complete and not one of them (as a study without a sample chooses among all its trials, the baseline's
    included). No choice when the trials trained on every row (the first candidate needed no refit)."""
    if candidates and candidates[0]["state"] == "SKIPPED":
        return candidates[:1]
    if base and base["state"] == "COMPLETE" and all(e["run_id"] != base["run_id"] for e in candidates):
        return [*candidates, base]
    return list(candidates)


def _reusable(record: dict[str, Any], side: Candidate, spec) -> dict[str, Any] | None:
    """A recorded refit of this run with the study's refit settings that did not fail, whatever its role."""
    entries = [*(record.get("candidates") or []), record.get("refit"), record.get("refit_baseline")]
    return next((e for e in entries if _current(e, side, spec) and e["state"] != "FAIL"), None)


def run_refit(handle, prepared: PreparedData, *, trial_rows: int, threads: int | None = None,
              log: Callable[[str], None] = lambda message: None,
              on_epoch: Callable[[RefitTask, Any], None] | None = None) -> dict[str, Any] | None:
    """Refit the best configurations (study.refit.candidates) and the V1 baseline on every training row of
    `prepared` (what is not recorded yet), and choose the refit with the best validation score, the baseline's
    included; `trial_rows`: the rows the trials trained on. Returns the study's refit record; None without
    study.refit or without a candidate (no complete trial, finalists that chose nothing)."""
    # the training loop (torch) and MLflow's run lifecycle: imported by the commands that train, not by status
    from deepfm_tuner.tuner.stores.locks import creation_lock
    from deepfm_tuner.tuner.trials.runs import close_orphan_runs

    spec, study = handle.spec, handle.study
    if spec.refit is None:
        return None
    # processes summarising one study (team mode) take turns: the second finds the refits recorded
    with creation_lock(handle.storage_url, f"deepfm-refit-{spec.name}", f".{spec.name}.refit-lock"):
        # a refit runs only under this lock: one still RUNNING belongs to a process that died (kill -9)
        if closed := sum(close_orphan_runs(handle.tracker, handle.parent_run_id, role) for role in ROLES):
            log(f"refit: closed {closed} run{'s' if closed != 1 else ''} left RUNNING by a process that died "
                f"(FAILED, with the reason); training it again")
        try:
            choices = refit_choices(study, spec)
        except UserInputError as exc:
            log(f"refit: nothing to refit ({exc})")
            return None
        base = baseline_trial(study)
        baseline = trial_candidate(base, spec) if base is not None and base.state.name == "COMPLETE" else None
        before = recorded(study)
        record: dict[str, Any] = {"candidates": []}
        for rank, side in enumerate(choices, 1):
            entry = _reusable(before, side, spec) or _refit(handle, prepared, "refit", side, trial_rows, threads,
                                                            log, on_epoch, rank=rank, of=len(choices))
            record["candidates"].append(entry)
            retry(study.set_user_attr, ATTR_REFIT, {**before, "candidates": record["candidates"]})  # a Ctrl-C
            if entry["state"] == "SKIPPED":  # the trials trained on every row: the candidate's run is the model
                break
        if baseline is not None:
            record["refit_baseline"] = _reusable(record, baseline, spec) or _reusable(before, baseline, spec) or \
                _refit(handle, prepared, "refit_baseline", baseline, trial_rows, threads, log, on_epoch)
        pool = refit_pool(record["candidates"], record.get("refit_baseline"))
        record["refit"] = chosen_entry(pool, spec.metric)
        _drop_replaced_checkpoints(handle, before, record)
        retry(study.set_user_attr, ATTR_REFIT, record)
        _move_chosen_tag(handle, before.get("refit"), record, len(pool))
        if len(pool) > 1 and record["refit"]["state"] == "COMPLETE":
            which = "the V1 baseline" if record["refit"] is record.get("refit_baseline") else "trial"
            log(f"refit: chose {which} {record['refit']['of_trial']}'s configuration, the best of {len(pool)} on "
                f"all rows ({score_name(spec.metric)} {record['refit']['value']:.4f})")
        _log_to_parent(handle, record)
        return record


def _refit(handle, prepared: PreparedData, role: str, side: Candidate, trial_rows: int, threads: int | None,
           log: Callable[[str], None], on_epoch, rank: int = 0, of: int = 1) -> dict[str, Any]:
    """One refit of `side`'s run on every training row, as its own nested run; returns its record entry."""
    from deepfm_tuner.model.train import train, training_setup
    from deepfm_tuner.tuner.stores.datasets import run_datasets
    from deepfm_tuner.tuner.trials.runs import run_params, run_tags, training_run

    spec, tracker = handle.spec, handle.tracker
    max_epochs, patience = settings(spec)
    policy, trained = trained_config(side.trial, spec)
    trained = trained or spec.training  # a trial from before the record: the study's training control
    control = trained.replace(seed=side.seed, max_epochs=max_epochs, patience=patience,
                              threads=threads or trained.threads)
    rows = len(prepared.parts["train"])
    entry: dict[str, Any] = {"role": role, "of_trial": side.trial.number, "of_run_id": side.run_id,
                             "seed": side.seed, "max_epochs": max_epochs, "patience": patience, "rows": rows,
                             "trial_rows": trial_rows, "sample_value": side.value}
    if trial_rows >= rows and (trained.max_epochs, trained.patience) == (max_epochs, patience):
        log(f"refit of trial {side.trial.number}: not needed (its run trained on every row with the refit's epochs "
            f"and patience)")
        return {**entry, "state": "SKIPPED", "run_id": side.run_id}
    who = "the V1 baseline trial" if role == "refit_baseline" else "trial"
    which = f" (candidate {rank} of {of})" if of > 1 else ""
    log(f"refit{which}: training {who} {side.trial.number}'s configuration (seed {side.seed}) on all {rows:,} training "
        f"rows, up to {max_epochs} epoch{'s' if max_epochs != 1 else ''} (patience {patience})")
    task = RefitTask(role, side.trial.number, rows, max_epochs)
    tags = {TAG_REFIT_OF_TRIAL: str(side.trial.number), TAG_REFIT_OF_RUN: side.run_id, TAG_REFIT_ROWS: str(rows),
            **run_tags(prepared.fingerprint, side.seed, training_setup(control))}
    if rank:
        tags[TAG_REFIT_RANK] = str(rank)
    with training_run(tracker, handle.parent_run_id, f"{role.replace('_', '-')}-{side.trial.number}", role,
                      run_params(policy, control), tags, datasets=run_datasets(prepared),
                      interrupted=("KILLED", "KILLED")) as run:
        entry.update(state="FAIL", run_id=run.run_id)

        def epoch(metrics) -> None:
            run.log_epoch(metrics)
            if on_epoch is not None:
                on_epoch(task, metrics)

        try:
            started = time.perf_counter()
            result = train(prepared, policy, control, on_epoch=epoch, select=spec.metric)
            value = run.log_result(result, spec.metric, {SAMPLES_TRAINED: result.samples,
                                                         sample_score_name(spec.metric): side.value})
            checkpoint = run.save_checkpoint(policy, control, prepared, result)
            tracker.set_tags(run.run_id, {TAG_REFIT_SAMPLES: str(result.samples)})
            entry.update(state="COMPLETE", value=value, samples=result.samples, seconds=result.train_seconds,
                         wall_seconds=time.perf_counter() - started, best_epoch=result.best_epoch,
                         epochs=len(result.history), checkpoint=checkpoint)
            run.finished()
            log(f"refit of trial {side.trial.number}: {score_name(spec.metric)} {value:.4f} on all rows "
                f"(trained on the trials' {trial_rows:,} rows: {side.value:.4f}), {result.samples:,} samples "
                f"in {entry['wall_seconds']:.0f}s")
        except Exception as exc:  # noqa: BLE001 - recorded on the run and in the study; promotion says so
            entry["reason"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]
            run.fail(entry["reason"])
            log(f"refit of trial {side.trial.number} failed: {entry['reason'][:200]}")
    return entry


def _entries(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in (*(record.get("candidates") or []), record.get("refit"), record.get("refit_baseline")) if e]


def _drop_replaced_checkpoints(handle, before: dict[str, Any], record: dict[str, Any]) -> None:
    """The checkpoints of refits the new record no longer holds (an earlier choice) are deleted (best effort)."""
    from deepfm_tuner.tuner.trials.runs import prune_checkpoints  # MLflow: as run_refit

    kept = {e["run_id"] for e in _entries(record)}
    replaced = {e["run_id"] for e in _entries(before) if e.get("checkpoint") and e["run_id"] not in kept}
    if replaced:
        prune_checkpoints(handle.tracker, "", sorted(replaced))


def _move_chosen_tag(handle, previous: dict[str, Any] | None, record: dict[str, Any], pool: int) -> None:
    """`deepfm.refit_chosen` marks the chosen refit of several, and only it (an earlier choice loses the tag)."""
    chosen = record["refit"]
    if previous and previous.get("run_id") != chosen["run_id"] and previous["state"] == "COMPLETE":
        try:
            handle.tracker.client.delete_tag(previous["run_id"], TAG_REFIT_CHOSEN)
        except Exception:  # noqa: BLE001 - it never had the tag (one candidate), or its run is gone
            pass
    if pool > 1 and chosen["state"] == "COMPLETE":
        handle.tracker.set_tags(chosen["run_id"], {TAG_REFIT_CHOSEN: "true"})


def _log_to_parent(handle, record: dict[str, Any]) -> None:
    score = score_name(handle.spec.metric)
    metrics = {f"{role}_{score}": record[role]["value"] for role in ROLES
               if record.get(role, {}).get("state") == "COMPLETE"}
    if metrics:
        handle.tracker.log_summary(handle.parent_run_id, metrics)


# -- what promotion registers --------------------------------------------------------------------------
def refitted_sides(study: optuna.Study, spec, candidate: Candidate, baseline: Candidate | None
                   ) -> tuple[Candidate, Candidate | None, str]:
    """The gate's two sides as refit on every training row: (the chosen refit, the baseline's refit or None, why
    the baseline is not compared). The chosen refit is the best, on the validation split, of the refits of the
    study's current choices (`refit_choices`, `candidate` first) and the baseline's (`refit_pool`); a choice whose refit has not run or failed is
    one UserInputError line (never a half-trained or sample-trained model in its place); a baseline without a
    complete refit is not compared (a sample-trained baseline is no match for a refit). A refit that was not
    needed leaves its side as it is."""
    record = recorded(study)
    entries = [*(record.get("candidates") or []), *([record["refit"]] if record.get("refit") else [])]
    current: list[dict[str, Any]] = []
    for side in refit_choices(study, spec, candidate):
        entry = next((e for e in entries if _current(e, side, spec)), None)
        if entry is None:
            raise UserInputError(f"the refit of trial {side.trial.number} of study '{spec.name}' (study.refit) has "
                                 f"not run; run 'deepfm promote' with the study file, which refits it first")
        current.append(entry)
        if entry["state"] == "SKIPPED":
            break
    base = record.get("refit_baseline")
    base_current = baseline is not None and _current(base, baseline, spec)
    pool = refit_pool(current, base if base_current else None)
    entry = chosen_entry(pool, spec.metric)
    if entry["state"] == "FAIL":
        raise UserInputError(f"the refit of trial {entry['of_trial']} of study '{spec.name}' failed "
                             f"({entry.get('reason', '')[:300]}); run 'deepfm promote' to try it again, or set "
                             f"study.refit: false to register the run trained on the trials' rows")
    if entry["of_run_id"] == candidate.run_id:
        side = candidate
    elif baseline is not None and entry["of_run_id"] == baseline.run_id:
        side = baseline
    else:
        side = next(trial_candidate(t, spec) for t in study.get_trials(deepcopy=False) if t.number == entry["of_trial"])
    chosen = _as_refit(side, entry, spec.metric)
    if len(pool) > 1:  # compared with how many refits, and its place among them (the V1 baseline's last)
        chosen = dataclasses.replace(chosen, tags={**chosen.tags, "refit.candidates": str(len(pool)),
                                                   "refit.rank": str(pool.index(entry) + 1)})
    if baseline is None:
        return chosen, None, ""
    if not base_current or base["state"] == "FAIL":
        why = "failed" if base_current else "has not run"
        return chosen, None, (f"the refit of V1 baseline trial {baseline.trial.number} {why}: not compared "
                              f"(a baseline trained on the trials' rows is no match for a refit)")
    return chosen, _as_refit(baseline, base, spec.metric), ""


def _as_refit(side: Candidate, entry: dict[str, Any], metric: str) -> Candidate:
    if entry["state"] != "COMPLETE":  # SKIPPED: the run itself is the model on every row
        return side
    return dataclasses.replace(side, run_id=entry["run_id"], value=entry["value"], checkpoint=entry["checkpoint"],
                               tags={**side.tags, "refit.of_trial": str(entry["of_trial"]),
                                     "refit.of_run_id": entry["of_run_id"], "refit.rows": str(entry["rows"]),
                                     "refit.samples": str(entry["samples"]),
                                     f"refit.{sample_score_name(metric)}": f"{entry['sample_value']:.6f}"})


# -- what status and the report show ---------------------------------------------------------------------
def refit_lines(study: optuna.Study, spec) -> list[str]:
    """The refits beside the trials (`deepfm status`, `deepfm tune`), or why there is none yet."""
    if spec.refit is None:
        return []
    record = recorded(study)
    lines = record_lines(record, spec.metric)
    if not lines:
        return ["refit: not run yet ('deepfm tune' or 'deepfm promote' refits the chosen configuration)"]
    try:
        choices = refit_choices(study, spec)
    except UserInputError:
        return lines
    entries = record.get("candidates") or [record["refit"]]
    if entries[0]["state"] == "SKIPPED":
        choices = choices[:1]
    missing = [side.trial.number for side in choices if not any(_current(e, side, spec) for e in entries)]
    if missing:
        lines.append(f"  (of an earlier choice: the next 'deepfm tune' or 'deepfm promote' refits trial"
                     f"{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))})")
    return lines


def record_lines(record: dict[str, Any], metric: str) -> list[str]:
    """What the refit record says, in lines under 80 columns: each side's score on every row, the score of the run
    it repeats (trained on the trials' rows), its epochs and time (also the report's section); [] for none."""
    entry = record.get("refit")
    if entry is None:
        return []
    if entry["state"] == "SKIPPED":
        return [f"refit: not needed (the trials trained on all {entry['rows']:,} rows with its epochs and patience)"]
    lines = [f"refit on all {entry['rows']:,} training rows (trials: {entry['trial_rows']:,}), {score_name(metric)}:"]
    others = [("also    ", e) for e in record.get("candidates") or [] if e["run_id"] != entry["run_id"]]
    for label, e in [("chosen  ", entry), *others, ("baseline", record.get("refit_baseline"))]:
        if e is None:
            continue
        head = f"  {label} trial {e['of_trial']}:"
        if label == "baseline" and e["run_id"] == entry["run_id"]:
            lines.append(f"{head} the chosen configuration itself")
        elif e["state"] == "COMPLETE":
            lines.append(f"{head} {e['value']:.4f} (sample-trained {e['sample_value']:.4f}), best epoch "
                         f"{human_epoch(e['best_epoch'])} of {e['epochs']}, {_duration(e['wall_seconds'])}")
        else:
            lines.append(f"{head} failed: {e.get('reason', '')[:50]}")
    base = record.get("refit_baseline")
    if base is not None and entry["state"] == base["state"] == "COMPLETE" and base["run_id"] != entry["run_id"]:
        sign = 1 if METRICS[metric] == "maximize" else -1  # > 0: the chosen refit is better, whatever the direction
        lines.append(f"  lift of the chosen refit over the baseline's: {sign * (entry['value'] - base['value']):+.4f}")
    return lines


def _duration(seconds: float) -> str:
    """41s, 17m, 2.5h."""
    if seconds < 99.5:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 5970 else f"{seconds / 3600:.1f}h"
