"""The `deepfm` command line: thin click commands over the library; bad input -> one line, exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from deepfm_tuner.model.errors import UserInputError

from deepfm_tuner.tuner.trials import interrupts
from deepfm_tuner.tuner.stores.disks import DISK_ERRNOS, check_writable, disk_error, quiet_defaults
from deepfm_tuner.tuner.stores.locations import pick_storage, pick_tracking_uri, storage_option, store_options, tracking_uri_option

quiet_defaults()


class InputError(click.ClickException):
    """Shown as 'Error: <one line>' with exit code 2, no traceback."""

    exit_code = 2


class DeepfmGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserInputError as exc:
            raise InputError(str(exc)) from None
        except OSError as exc:  # a disk that filled up (or turned read-only) after the checks at the edge
            if exc.errno not in DISK_ERRNOS:
                raise
            raise InputError(str(disk_error(exc, exc.filename or "the disk", "free some space or write elsewhere"))) from None


@click.group(cls=DeepfmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deepfm-tuner")
def main() -> None:
    """Tune, track, promote and serve DeepFM click-through-rate scoring policies."""


# -- shared options --------------------------------------------------------------------------------
def data_options(func):
    """--data/--valid/--test/--format/--label/--schema/--synthetic: where rows come from and what they mean."""
    func = click.option("--schema", "schema_path", type=click.Path(dir_okay=False), default=None,
                        help="YAML of column roles, as a study's data.schema: label, categorical, numeric, "
                             "multivalued, ignore, ... (default: inferred from the data).")(func)
    func = click.option("--synthetic", type=click.IntRange(min=100), default=None,
                        help="Generate this many Criteo-format synthetic rows instead of reading --data.")(func)
    func = click.option("--label", default=None, help="Label column (default 'label'; Criteo preset: 'label').")(func)
    func = click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "parquet", "criteo"]), default=None,
                        help="File format (default: from the extension).")(func)
    func = click.option("--test", "test_path", type=click.Path(dir_okay=False), default=None,
                        help="Held-out test file (default: split 10% off --data).")(func)
    func = click.option("--valid", "valid_path", type=click.Path(dir_okay=False), default=None,
                        help="Fixed validation file (default: split 10% off --data).")(func)
    func = click.option("--data", "data_path", type=click.Path(dir_okay=False), default=None,
                        help="Training data file (CSV, TSV, Parquet, or Criteo TSV with --format criteo).")(func)
    return func


def read_schema_file(path: str) -> dict:
    """A --schema file: the mapping a study gives as `data.schema` (or a file with that mapping under `schema:`)."""
    from deepfm_tuner.model.config import load_yaml

    document = load_yaml(path)
    if isinstance(document, dict) and set(document) == {"schema"}:
        document = document["schema"]
    if not isinstance(document, dict) or not document:
        raise UserInputError(f"--schema {path}: expected a mapping of column roles such as "
                             f"'label: click' and 'categorical: [site, ad]'")
    return document


def data_spec_from_options(data_path, valid_path, test_path, fmt, label, synthetic, schema_path=None):
    from deepfm_tuner.model.data.source import DataSpec
    from deepfm_tuner.model.errors import ConfigError

    if (data_path is None) == (synthetic is None):
        raise UserInputError("give either --data FILE or --synthetic ROWS")
    if schema_path and synthetic is not None:
        raise UserInputError("--schema describes files given with --data; synthetic data has its own schema")
    schema = read_schema_file(schema_path) if schema_path else {}
    if label:
        schema["label"] = label  # --label wins over the file's label
    if schema_path:
        try:
            return DataSpec(train=data_path, valid=valid_path, test=test_path, format=fmt, schema=schema)
        except ConfigError as exc:
            raise UserInputError(f"--schema {schema_path}: {str(exc).removeprefix('data.schema: ')}") from None
    if synthetic is not None:
        return DataSpec(synthetic={"rows": synthetic}, valid=valid_path, schema=schema)
    return DataSpec(train=data_path, valid=valid_path, test=test_path, format=fmt, schema=schema)


def _log_to_stderr(message: str) -> None:
    click.echo(message, err=True)


# -- data ------------------------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Data utilities."""


@data.command("synth")
@click.option("--rows", type=click.IntRange(min=100), default=100_000, show_default=True, help="Rows to generate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-cardinality", type=click.IntRange(min=4), default=100_000, show_default=True,
              help="Distinct tokens in the widest categorical field.")
@click.option("--test-fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.1,
              show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="data/generated/synth", show_default=True)
@click.option("--force", is_flag=True, help="Regenerate even if OUT already holds a data set.")
def data_synth(rows, seed, max_cardinality, test_fraction, out, force) -> None:
    """Generate Criteo-format data with a known click probability.

    Writes OUT/train.tsv, OUT/test.tsv and OUT/truth.json (the Bayes-optimal test AUC/logloss), in chunks
    (memory does not grow with --rows) and atomically; an OUT that already holds this data set is reused.

    Example: deepfm data synth --rows 1000000 --out data/generated/1m
    """
    from deepfm_tuner.model.data.synth import SynthSpec, differences, read_truth, write_dataset

    from deepfm_tuner.tuner.cli.console import out as console

    check_writable(out, "pass --out with a directory on a writable disk")
    spec = SynthSpec(rows=rows, seed=seed, max_cardinality=max_cardinality)
    truth = None if force else read_truth(out)
    if truth is not None and (diffs := differences(truth, spec, test_fraction)):
        raise UserInputError(f"{out} already holds a different synthetic data set ({'; '.join(diffs)}); "
                             f"choose another --out or pass --force to regenerate it")
    reused = truth is not None
    if not reused:
        truth = write_dataset(spec, out, test_fraction, overwrite=force)
    rows_text = f"{truth['train_rows']:,} train + {truth['test_rows']:,} test rows"
    done = f"reusing the {rows_text} in" if reused else f"wrote {rows_text} to"
    console.print(f"{done} {out}/ "
                  f"(click rate {truth['click_rate']:.3f}; best achievable test AUC {truth['test_bayes_auc']:.4f}, "
                  f"logloss {truth['test_bayes_logloss']:.4f})")


@data.command("prepare")
@click.argument("study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
def data_prepare(study_path) -> None:
    """Encode the study's data once into its on-disk dataset (data.encoded_dir) and print its folder.

    tune, train and promote build it on first use too; every later run, worker and study on the same files
    maps it instead of reading and encoding them again. Example: deepfm data prepare studies/criteo.yaml
    """
    prepared = _load_spec(study_path).data.prepare(_log_to_stderr)
    click.echo(f"data: {prepared.summary()}", err=True)
    click.echo(str(prepared.folder))


# -- train / evaluate ------------------------------------------------------------------------------
@main.command()
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), required=True,
              help="V1 policy YAML (policy_configs.scoring_policy, optional training: block).")
@data_options
@click.option("--out", type=click.Path(file_okay=False), default="outputs/policy", show_default=True,
              help="Directory for the trained policy.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override training.max_epochs.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Override training.device.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: torch's).")
def train(policy_path, data_path, valid_path, test_path, fmt, label, synthetic, schema_path, out, epochs, device,
          threads) -> None:
    """Train one DeepFM scoring policy and save it as a self-contained directory.

    Example: deepfm train --policy studies/policy.yaml --data data/generated/synth/train.tsv --format criteo
    """
    from deepfm_tuner.model.config import read_policy_yaml
    from deepfm_tuner.model.policy import ScoringPolicy
    from deepfm_tuner.model.deepfm import check_model_size, estimate_parameters
    from deepfm_tuner.model.train import evaluate, resolve_device, train as train_model

    from deepfm_tuner.tuner.cli.console import err, out as console
    from deepfm_tuner.tuner.cli.progress import EpochProgress, human_epoch

    check_writable(out, "pass --out with a directory on a writable disk")
    policy, control = read_policy_yaml(policy_path)
    overrides = {k: v for k, v in {"max_epochs": epochs, "device": device, "threads": threads}.items() if v}
    control = control.replace(**overrides)
    resolve_device(control.device)  # no CUDA: fail before reading any data
    spec = data_spec_from_options(data_path, valid_path, test_path, fmt, label, synthetic, schema_path)
    prepared = spec.prepare(_log_to_stderr)
    enc = prepared.encoder  # a model too large for memory: fail before printing or allocating anything
    check_model_size(estimate_parameters(enc.categorical_dims, enc.multivalued_dims, len(enc.schema.numeric), policy),
                     policy)
    err.print(f"data: {prepared.summary()}", markup=False)
    with EpochProgress(control.max_epochs, err) as progress:
        result = train_model(prepared, policy, control, on_epoch=progress.update)
    test_auc, test_logloss = evaluate(result.model, prepared.test) if len(prepared.test) else (float("nan"),) * 2
    metrics = {
        "best_epoch": result.best_epoch, "stop_reason": result.stop_reason, "train_seconds": result.train_seconds,
        "val_auc": result.best.val_auc, "val_logloss": result.best.val_logloss,
        "test_auc": test_auc, "test_logloss": test_logloss, "data_fingerprint": prepared.fingerprint,
        "history": [m.to_dict() for m in result.history],
    }
    ScoringPolicy(policy, control, prepared.encoder, result.model, metrics).save(out)
    console.print(f"{result.stop_reason}; best epoch {human_epoch(result.best_epoch)}: val AUC {result.best.val_auc:.4f}, "
                  f"test AUC {test_auc:.4f}, test logloss {test_logloss:.4f}")
    console.print(f"saved policy to {out}/")


@main.command()
@click.option("--model", "model_dir", type=click.Path(file_okay=False), required=True,
              help="A policy directory from 'deepfm train' or 'deepfm pull'.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), required=True, help="Labelled data to score.")
@click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "parquet", "criteo"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(model_dir, data_path, fmt, as_json) -> None:
    """AUC and logloss of a saved policy on a labelled file.

    Example: deepfm evaluate --model outputs/policy --data data/generated/synth/test.tsv --format criteo
    """
    from deepfm_tuner.model.policy import ScoringPolicy

    from deepfm_tuner.tuner.cli.console import out as console

    result = ScoringPolicy.load(model_dir).evaluate_file(data_path, fmt)
    console.print(json.dumps(result) if as_json else
                  f"{result['rows']:,} rows: AUC {result['auc']:.4f}, logloss {result['logloss']:.4f} "
                  f"(click rate {result['click_rate']:.3f})")


# -- tuning ----------------------------------------------------------------------------------------
def _existing_study(spec, storage, study_path):
    """The study as stored; a study never started is a one-line error saying how to start it (nothing created)."""
    from deepfm_tuner.tuner.pipeline.existing import existing_study

    return existing_study(spec, storage, study_path)[0]


def _print_promotion(console, name: str, p) -> None:
    console.print(f"registered {name} version {p.version} (test AUC {p.test_auc:.4f}) -> alias '{p.alias}'"
                  f"{': ' + p.reason if p.reason else ''}")
    console.print(f"model URI: {p.model_uri}")
    if p.baseline_message:
        console.print(p.baseline_message)


def _load_spec(study_path: str, **overrides):
    from deepfm_tuner.tuner.spec.study import load_study

    return load_study(study_path).with_overrides(**overrides)


@main.command()
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
    from deepfm_tuner.tuner.cli.console import err, out as console
    from deepfm_tuner.tuner.cli.progress import TrialProgress
    from deepfm_tuner.tuner.pipeline.runner import redact
    from deepfm_tuner.tuner.pipeline.tune import best_trial, tune as run_tune

    interrupts.install()
    spec = _load_spec(study_path, n_trials=n_trials, timeout=timeout)
    if workers > 1:
        from deepfm_tuner.tuner.pipeline.workers import run_local_workers

        result = run_local_workers(spec, study_path, workers=workers, storage=storage, tracking_uri=tracking_uri,
                                   threads=threads, promote=promote, n_trials=n_trials, timeout=timeout)
        _print_tune_result(console, spec, result, tracking_uri)
        return
    progress = TrialProgress(err, spec.n_trials, spec.training.max_epochs, spec.metric, spec.direction)

    def ready(handle, data) -> None:
        err.print(f"study '{spec.name}' ({redact(handle.storage_url)}), MLflow experiment '{spec.experiment_name}' "
                  f"({handle.tracking_uri}); data: {data.summary()}", markup=False)
        for note in handle.notes:
            err.print(note, markup=False)
        best = best_trial(handle.study)
        progress.start(sum(1 for t in handle.study.trials if t.state.name in ("COMPLETE", "PRUNED")),
                       (best.number, best.value) if best else None)

    try:
        with progress:
            result = run_tune(spec, storage=storage, tracking_uri=tracking_uri, threads=threads, promote=promote,
                              on_epoch=progress.on_epoch, on_trial=progress.on_trial, on_ready=ready, summary=summary,
                              log=_log_to_stderr)
    except KeyboardInterrupt:
        interrupts.handled()
        err.print("interrupted: the running trial was marked failed (a finalist retrain: killed) and its MLflow run "
                  "closed; run the same command to resume")
        sys.exit(130)
    _print_tune_result(console, spec, result, tracking_uri)


def _print_trained(console, trial, spec) -> None:
    from deepfm_tuner.model.config import policy_with_training_yaml

    from deepfm_tuner.tuner.trials.records import trained_config

    text = policy_with_training_yaml(*trained_config(trial, spec))
    console.print(f"best trial {trial.number} trained:", markup=False)
    console.print(text.rstrip(), markup=False, highlight=False)


def _print_tune_result(console, spec, result, tracking_uri) -> None:
    from deepfm_tuner.model.config import policy_to_v1_yaml

    from deepfm_tuner.tuner.trials.baseline import describe_lift
    from deepfm_tuner.tuner.trials.records import trained_config
    from deepfm_tuner.tuner.spec.space import tuned_training

    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.counts.items()))
    console.print(f"study '{spec.name}': {counts}")
    if result.best_trial is None:
        console.print("no trial completed; see 'deepfm status' for the failures")
        return
    best = result.best_trial
    policy, training = trained_config(best, spec)
    console.print(f"best trial {best.number}: score_{spec.metric} {best.value:.4f}; its V1 config:")
    console.print(policy_to_v1_yaml(policy).rstrip())
    if spec.training_space and training is not None:  # the tuned training knobs, as the training: block spells them
        chosen = tuned_training(training, spec.training_space)
        console.print("training: " + ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}"
                                               for k, v in chosen.items()), markup=False, highlight=False)
    console.print(describe_lift(result.handle.study, spec.metric))
    _print_finalists(console, result.finalists)
    if result.promotion is not None:
        _print_promotion(console, spec.model_name, result.promotion)
    uri = result.handle.tracking_uri
    if uri.startswith(("http://", "https://")):
        console.print(f"browse the trials: open {uri} (experiment '{spec.experiment_name}')")
    else:
        console.print(f"browse the trials: deepfm ui {spec.source}{' --tracking-uri ' + uri if tracking_uri else ''}  "
                      f"(MLflow UI on http://127.0.0.1:5000, 'Model training' view)")


def _print_finalists(console, result) -> None:
    from deepfm_tuner.tuner.trials.finalists import table_lines

    if result is not None:
        for line in table_lines(result):
            console.print(line, markup=False, highlight=False)


@main.command()
@click.argument("study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
@store_options
def init(study_path, storage, tracking_uri) -> None:
    """Encode the data and create the study, its MLflow experiment and parent run once, before many workers start.

    Example: deepfm init studies/criteo.yaml --storage postgresql+psycopg2://optuna:pw@db/optuna
    """
    from deepfm_tuner.tuner.cli.console import out as console
    from deepfm_tuner.tuner.pipeline.runner import check_stores, init_study, redact
    from deepfm_tuner.tuner.pipeline.tune import load_data

    spec = _load_spec(study_path)
    check_stores(spec, storage, tracking_uri)
    load_data(spec, _log_to_stderr)  # encoded once here; the workers map it (bad data fails before the study)
    handle = init_study(spec, storage, tracking_uri)
    for note in handle.notes:
        console.print(note, markup=False)
    console.print(f"study '{handle.spec.name}' ready in {redact(handle.storage_url)}; MLflow experiment "
                  f"{handle.tracker.experiment_id}, parent run {handle.parent_run_id}")


@main.command()
@click.argument("study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
@store_options
def status(study_path, storage, tracking_uri) -> None:
    """Trials table (number, state, score_<metric> at the best epoch, best epoch, duration, params) and the best trial.

    Example: deepfm status studies/quick.yaml
    """
    from rich.table import Table

    from deepfm_tuner.tuner.trials.baseline import describe_lift, is_baseline
    from deepfm_tuner.tuner.cli.console import out as console
    from deepfm_tuner.tuner.trials.objective import ATTR_SKIPPED, ATTR_TRAINING, ATTR_WARM_START, score_name
    from deepfm_tuner.tuner.cli.progress import human_epoch
    from deepfm_tuner.tuner.spec.space import shown_params
    from deepfm_tuner.tuner.pipeline.tune import best_trial, pruned_where, trial_counts, trial_score

    spec = _load_spec(study_path)
    study = _existing_study(spec, storage, study_path)
    score = score_name(spec.metric)
    table = Table(title=f"study '{spec.name}'")
    for column in ("#", "state", score, "best epoch", "seconds", "params"):
        table.add_column(column, justify="left" if column in ("state", "params") else "right",
                         no_wrap=column != "params")
    for t in study.get_trials(deepcopy=False):
        value = trial_score(t, spec.direction)
        training = t.user_attrs.get(ATTR_TRAINING, {})
        best_epoch = str(human_epoch(training["best_epoch"])) if "best_epoch" in training else ""
        seconds = f"{t.duration.total_seconds():.1f}" if t.duration else ""
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown_params(t.params).items())
        state = "skipped" if t.user_attrs.get(ATTR_SKIPPED) else t.state.name.lower()
        if pruned_where(t) is not None:
            state = pruned_where(t)
        origin = " (V1 baseline)" if is_baseline(t) else (
            f" (from {t.user_attrs[ATTR_WARM_START]})" if t.user_attrs.get(ATTR_WARM_START) else "")
        table.add_row(str(t.number), state + origin, "" if value is None else f"{value:.4f}", best_epoch, seconds,
                      params)
    console.print(table)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(trial_counts(study).items()))
    best = best_trial(study)
    console.print(f"{counts or 'no trials'}" + (f"; best trial {best.number}: {score} {best.value:.4f}" if best else ""))
    if best is not None:  # what it trained, as recorded at its start (not rebuilt from today's study file)
        _print_trained(console, best, spec)
    if study.trials:
        console.print(describe_lift(study, spec.metric))
    if spec.finalists is not None:
        from deepfm_tuner.tuner.trials.finalists import current_result

        finalists = current_result(study, spec)
        _print_finalists(console, finalists)
        if finalists is None and best is not None:
            console.print("finalists: not run yet for the current best trials ('deepfm tune' or 'deepfm promote' "
                          "re-trains them)")


@main.command()
@click.argument("study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
@store_options
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="HTML file (default: outputs/<study>-report.html).")
def report(study_path, storage, tracking_uri, out) -> None:
    """Write the study's Optuna figures (history, intermediate values, importances, ...) to one HTML file.

    Example: deepfm report studies/quick.yaml --out quick.html
    """
    from deepfm_tuner.tuner.cli.console import out as console
    from deepfm_tuner.tuner.trials.objective import curve_name
    from deepfm_tuner.tuner.pipeline.report import write_report

    spec = _load_spec(study_path)
    out = out or f"outputs/{spec.name}-report.html"
    check_writable(Path(out).parent, "pass --out with a file on a writable disk")
    study = _existing_study(spec, storage, study_path)
    path = write_report(study, out, spec.metric, curve_name(spec.metric, spec.training))
    console.print(f"wrote {path}")


@main.command()
@click.argument("study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
@store_options
@click.option("--name", default=None, help="Registered model name (default: study.registered_model or deepfm-<study>).")
@click.option("--force", is_flag=True, help="Move 'champion' even if the gate would keep the current champion.")
def promote(study_path, storage, tracking_uri, name, force) -> None:
    """Register the study's best trial and move alias 'champion' to it if it passes the gate.

    With study.finalists, the candidate is the configuration with the best mean over its re-seeded runs (its
    best retrain is registered); retrains not recorded yet are trained first.

    The gate is DeLong's paired AUC test against the current champion on the same test rows (study file
    'promotion: {require: not_worse|better, alpha: 0.05}'); the V1 baseline trial is compared the same way.

    Example: deepfm promote studies/quick.yaml
    """
    from deepfm_tuner.tuner.cli.console import out as console
    from deepfm_tuner.tuner.pipeline.existing import existing_handle
    from deepfm_tuner.tuner.pipeline.promotion import promote_study
    from deepfm_tuner.tuner.pipeline.runner import check_stores
    from deepfm_tuner.tuner.pipeline.tune import load_data

    spec = _load_spec(study_path)
    check_stores(spec, storage, tracking_uri)
    handle = existing_handle(spec, storage, tracking_uri, study_path)  # a wrong name creates nothing
    data = load_data(spec, _log_to_stderr)  # only the test rows are read: from the encoded dataset
    if spec.finalists is not None:  # finalist retrains not recorded yet (an interrupted tune, team mode) train here
        from deepfm_tuner.tuner.trials.finalists import run_finalists

        _print_finalists(console, run_finalists(handle, data, log=_log_to_stderr))
    _print_promotion(console, name or spec.model_name,
                     promote_study(handle, test_frame=data.test_frame(), force=force, name=name))


def _require_store(uri: str, what: str) -> None:
    """A local SQLite store must exist: opening a missing one would create an empty store and serve nothing."""
    from deepfm_tuner.tuner.stores.disks import missing_sqlite_store

    path = missing_sqlite_store(uri)
    if path is not None:
        raise UserInputError(f"no {what} at {path}; run 'deepfm tune STUDY.yaml' here first, or point at the "
                             f"right store with --tracking-uri/--storage")


def _require_free_port(port: int) -> None:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise UserInputError(f"port {port} on 127.0.0.1 is already in use; pass --port with a free port or stop "
                                 f"what listens there") from None


def _exec(program: str, args: list[str]) -> None:
    """Replace this process with `program` of this environment (even if its bin/ is not on PATH)."""
    import os
    import shutil

    beside = Path(sys.executable).with_name(program)
    exe = str(beside) if beside.exists() else (shutil.which(program) or program)
    os.execvp(exe, [exe, *args])


@main.command()
@click.argument("study_path", metavar="[STUDY.yaml]", required=False, type=click.Path(dir_okay=False))
@tracking_uri_option
@click.option("--experiment", default=None, help="Print the direct link to this experiment's runs (default: the study's).")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
def ui(study_path, tracking_uri, experiment, port) -> None:
    """Start the MLflow UI on 127.0.0.1 over the configured store; with STUDY.yaml, print the link to its runs.

    Example: deepfm ui studies/quick.yaml --port 5000
    """
    import os

    from deepfm_tuner.tuner.stores.tracking import artifact_location_for, resolve_tracking_uri

    spec = _load_spec(study_path) if study_path else None
    uri = pick_tracking_uri(tracking_uri, spec)
    if uri.startswith(("http://", "https://")):
        raise UserInputError(f"{uri} is already an MLflow server: open it in a browser")
    _require_store(uri, "MLflow store")
    _require_free_port(port)
    uri = resolve_tracking_uri(uri)
    link = f"http://127.0.0.1:{port}"
    experiment = experiment or (spec.experiment_name if spec else None)
    if experiment:
        from mlflow import MlflowClient

        found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
        if found is None:
            raise UserInputError(f"no MLflow experiment '{experiment}' in {uri}; run 'deepfm tune' first or check "
                                 f"--experiment")
        link += f"/#/experiments/{found.experiment_id}"
    args = ["ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if artifact_location_for(uri):
        args += ["--default-artifact-root", artifact_location_for(uri)]
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    click.echo(f"MLflow UI on {link} (store {uri}); trials are under 'Model training' (MLflow 3 opens on "
               f"'GenAI'); Ctrl-C to stop", err=True)
    _exec("mlflow", args)


@main.command()
@click.argument("study_path", metavar="[STUDY.yaml]", required=False, type=click.Path(dir_okay=False))
@storage_option
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
def dashboard(study_path, storage, port) -> None:
    """Start optuna-dashboard on 127.0.0.1 over the study storage (needs the 'dashboard' extra).

    Example: deepfm dashboard studies/quick.yaml --port 8080
    """
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        raise UserInputError("optuna-dashboard is not installed; install it with "
                             "pip install 'deepfm-tuner[dashboard]'") from None
    spec = _load_spec(study_path) if study_path else None
    url = pick_storage(storage, spec)
    _require_store(url, "Optuna storage")
    _require_free_port(port)
    from deepfm_tuner.tuner.pipeline.runner import redact, resolve_storage

    url = resolve_storage(url)
    link = f"http://127.0.0.1:{port}"
    if spec is not None:
        link += f"/dashboard/studies/{_existing_study(spec, url, study_path)._study_id}"
    click.echo(f"Optuna dashboard on {link} (storage {redact(url)}); Ctrl-C to stop", err=True)
    _exec("optuna-dashboard", [url, "--host", "127.0.0.1", "--port", str(port), "--quiet"])


from deepfm_tuner.tuner.cli.registry import pull, score  # noqa: E402

main.add_command(pull)
main.add_command(score)


def run() -> None:  # pragma: no cover - console-script shim
    main(prog_name="deepfm")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
