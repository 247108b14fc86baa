"""The study commands: `deepfm tune`, `init`, `status`, `report` and `promote`. Each reads the study file, resolves
its stores once, calls one library function and shows the result; the pipeline (Optuna, MLflow, torch) is imported
inside the commands that need it, so `--help` and `status` start fast."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from deepfm_tuner.tuner.cli.console import err
from deepfm_tuner.tuner.cli.console import out as console
from deepfm_tuner.tuner.cli.logs import quiet_optuna
from deepfm_tuner.tuner.cli.options import load_spec, log_to_stderr, store_options
from deepfm_tuner.tuner.stores.disks import check_writable
from deepfm_tuner.tuner.stores.locations import redact, resolve_stores
from deepfm_tuner.tuner.trials import interrupts


@click.command()
@click.argument("study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
@store_options
@click.option("--n-trials", type=click.IntRange(min=1), default=None, help="Total trials (overrides the study file).")
@click.option("--timeout", type=click.FloatRange(min=1), default=None, help="Seconds this worker runs new trials.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads per worker (default: this machine's cores / local workers).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker processes sharing the study (n_trials stays the total).")
@click.option("--promote/--no-promote", default=None, help="Promote the best trial at the end (default: study file).")
@click.option("--summary/--no-summary", default=True, hidden=True,
              help="Summarise on the parent run at the end (--workers N runs its workers without, then once).")
def tune(study_path, storage, tracking_uri, n_trials, timeout, threads, workers, promote, summary) -> None:
    """Create or resume a tuning study and run its trials.

    Example: deepfm tune studies/quick.yaml
    """
    # the pipeline (Optuna, MLflow, torch) and what shows its results: imported by the commands that use them
    from deepfm_tuner.tuner.cli.progress import TrialProgress
    from deepfm_tuner.tuner.cli.show import print_tune_result
    from deepfm_tuner.tuner.pipeline.tune import tune as run_tune
    from deepfm_tuner.tuner.trials.record import best_trial

    quiet_optuna()
    interrupts.install()
    spec = load_spec(study_path, n_trials=n_trials, timeout=timeout)
    progress = TrialProgress(err, spec.n_trials, spec.training.max_epochs, spec.metric, spec.direction)

    def ready(handle, data) -> None:
        err.print(f"study '{spec.name}' ({redact(handle.storage_url)}), MLflow experiment '{spec.experiment_name}' "
                  f"({handle.tracking_uri}); data: {data.summary()}", markup=False)
        for note in handle.notes:
            err.print(note, markup=False)
        best = best_trial(handle.study)
        progress.start(sum(1 for t in handle.study.trials if t.state.name in ("COMPLETE", "PRUNED")),
                       (best.number, best.value) if best else None, rows=len(data.parts["train"]))

    try:
        if workers > 1:  # this process coordinates; the workers show their own trials, prefixed
            result = run_tune(spec, storage=storage, tracking_uri=tracking_uri, threads=threads, workers=workers,
                              promote=promote, log=log_to_stderr)
        else:
            with progress:
                result = run_tune(spec, storage=storage, tracking_uri=tracking_uri, threads=threads, promote=promote,
                                  on_epoch=progress.on_epoch, on_trial=progress.on_trial, on_ready=ready,
                                  on_refit_epoch=progress.on_refit_epoch, summary=summary, log=log_to_stderr)
    except KeyboardInterrupt:
        interrupts.handled()
        err.print("interrupted: the running trial was marked failed (a finalist retrain or a refit: killed) and its "
                  "MLflow run closed; run the same command to resume")
        sys.exit(130)
    print_tune_result(console, spec, result, tracking_uri)


@click.command()
@click.argument("study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
@store_options
def init(study_path, storage, tracking_uri) -> None:
    """Encode the data and create the study, its MLflow experiment and parent run once, before many workers start.

    Example: deepfm init studies/criteo.yaml --storage postgresql+psycopg2://optuna:pw@db/optuna
    """
    from deepfm_tuner.tuner.pipeline.handle import init_study
    from deepfm_tuner.tuner.pipeline.tune import load_data
    from deepfm_tuner.tuner.stores.check import check_stores

    quiet_optuna()
    spec = load_spec(study_path)
    stores = resolve_stores(storage, tracking_uri, spec)
    check_stores(stores)
    # encoded once here (and with data.tune_rows the trials' sample drawn): the workers map them; bad data fails
    # before the study exists
    spec.data.for_trials(load_data(spec, log_to_stderr), log_to_stderr)
    handle = init_study(spec, stores)
    for note in handle.notes:
        console.print(note, markup=False)
    console.print(f"study '{handle.spec.name}' ready in {redact(handle.storage_url)}; MLflow experiment "
                  f"{handle.tracker.experiment_id}, parent run {handle.parent_run_id}")


@click.command()
@click.argument("study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
@store_options
def status(study_path, storage, tracking_uri) -> None:
    """Trials table (number, state, score_<metric> at the best epoch, best epoch, duration, params) and the best trial.

    Example: deepfm status studies/quick.yaml
    """
    from deepfm_tuner.tuner.cli.show import print_status
    from deepfm_tuner.tuner.stores.optuna_storage import existing_study

    quiet_optuna()
    spec = load_spec(study_path)
    study, _ = existing_study(spec.name, resolve_stores(storage, tracking_uri, spec).storage_url, study_path)
    print_status(console, study, spec)


@click.command()
@click.argument("study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
@store_options
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="HTML file (default: outputs/<study>-report.html).")
def report(study_path, storage, tracking_uri, out) -> None:
    """Write the study's Optuna figures (history, intermediate values, importances, ...) to one HTML file.

    Example: deepfm report studies/quick.yaml --out quick.html
    """
    from deepfm_tuner.tuner.pipeline.report import write_report
    from deepfm_tuner.tuner.stores.optuna_storage import existing_study
    from deepfm_tuner.tuner.trials.names import curve_name

    quiet_optuna()
    spec = load_spec(study_path)
    out = out or f"outputs/{spec.name}-report.html"
    check_writable(Path(out).parent, "pass --out with a file on a writable disk")
    study, _ = existing_study(spec.name, resolve_stores(storage, tracking_uri, spec).storage_url, study_path)
    path = write_report(study, out, spec.metric, curve_name(spec.metric, spec.training))
    console.print(f"wrote {path}")


@click.command()
@click.argument("study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
@store_options
@click.option("--name", default=None, help="Registered model name (default: study.registered_model or deepfm-<study>).")
@click.option("--force", is_flag=True, help="Move 'champion' even if the gate would keep the current champion.")
def promote(study_path, storage, tracking_uri, name, force) -> None:
    """Register the study's best trial and move alias 'champion' to it if it passes the gate.

    With study.finalists, the candidate is the configuration with the best mean over its re-seeded runs (its
    best retrain is registered); retrains not recorded yet are trained first. With study.refit, the candidate's
    refit on every training row is registered and compared with the V1 baseline's refit; a refit not recorded
    yet (or killed half-way) is trained first, and so is study.reference.

    The gate is DeLong's paired AUC test against the current champion on the same test rows (study file
    'promotion: {require: not_worse|better, alpha: 0.05}'); the V1 baseline trial is compared the same way.

    Example: deepfm promote studies/quick.yaml
    """
    from deepfm_tuner.tuner.cli.show import print_finalists, print_lines, print_promotion
    from deepfm_tuner.tuner.pipeline.handle import existing_handle
    from deepfm_tuner.tuner.pipeline.promotion import promote_study
    from deepfm_tuner.tuner.pipeline.refit import refit_lines, run_refit
    from deepfm_tuner.tuner.pipeline.tune import load_data
    from deepfm_tuner.tuner.stores.check import check_stores
    from deepfm_tuner.tuner.stores.datasets import part_dataset
    from deepfm_tuner.tuner.trials.finalist_runs import run_finalists
    from deepfm_tuner.tuner.trials.reference import check_reference, run_reference

    quiet_optuna()
    spec = load_spec(study_path)
    stores = resolve_stores(storage, tracking_uri, spec)
    check_stores(stores)
    check_reference(spec)
    handle = existing_handle(spec, stores, study_path)  # a wrong name creates nothing
    data = load_data(spec, log_to_stderr)  # mapped; promotion reads only the test rows
    trial_data = spec.data.for_trials(data, log_to_stderr)  # the trials' sample with data.tune_rows, else `data`
    if spec.finalists is not None:  # finalist retrains not recorded yet (an interrupted tune, team mode) train here
        print_finalists(console, run_finalists(handle, trial_data, log=log_to_stderr))
    if spec.refit is not None:  # a refit not recorded yet (an interrupted or killed one included) trains here
        run_refit(handle, data, trial_rows=len(trial_data.parts["train"]), log=log_to_stderr)
        print_lines(console, refit_lines(handle.study, spec))
    # trained only when not recorded yet; on every row when the study refits (like with like), else the trials' rows
    reference = run_reference(handle, data if spec.refit is not None else trial_data, log=log_to_stderr)
    if reference is not None:
        console.print(reference.line(), markup=False, highlight=False)
    print_promotion(console, name or spec.model_name,
                    promote_study(handle, test_frame=data.test_frame(), force=force, name=name,
                                  test_dataset=part_dataset(data, "test")))
