"""`deepfm pull`, `score`, `history`, `rollback` and `diff`: thin click commands over the registry (resolve, pull,
load a version, its alias history, a rollback, two versions compared) and serving (score a file); MLflow, torch
and rich are imported inside the commands, for the CLI's start-up time."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deepfm_tuner.model.errors import UserInputError
from deepfm_tuner.tuner.cli.options import tracking_uri_option
from deepfm_tuner.tuner.stores.disks import check_writable
from deepfm_tuner.tuner.stores.locations import missing_sqlite_store, resolve_stores


def registry_client(tracking_uri: str | None):
    """An MlflowClient on the given store; a missing embedded SQLite store is a one-line error, not a new DB."""
    uri = resolve_stores(None, tracking_uri).tracking_uri
    path = missing_sqlite_store(uri)
    if path is not None:
        raise UserInputError(f"no MLflow store at {path} (tracking URI {uri}); run 'deepfm tune' and "
                             f"'deepfm promote' first, or pass --tracking-uri")
    from mlflow import MlflowClient

    from deepfm_tuner.tuner.stores.sqlite import relocate_artifacts
    from deepfm_tuner.tuner.stores.tracking import check_reachable

    check_reachable(uri)
    if uri.startswith("sqlite:///"):  # absolute: MLflow caches stores by URI, a relative one follows the process
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
        relocate_artifacts(uri)  # a moved or copied mlruns/: its stored artifact locations made to point here
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@click.command()
@click.argument("reference", metavar="NAME[@ALIAS|/VERSION]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Directory to write model/, policy/, policy.yaml and source.json into.")
@tracking_uri_option
def pull(reference, out_dir, tracking_uri) -> None:
    """Download a registered scoring policy and its V1 policy.yaml.

    REFERENCE is NAME (its champion), NAME@ALIAS or NAME/VERSION, optionally prefixed by models:/.

    Example: deepfm pull ctr@champion --out outputs/champion
    """
    from deepfm_tuner.tuner.cli.console import out as console
    from deepfm_tuner.tuner.registry.pull import pull_model

    check_writable(out_dir, "pass --out with a directory on a writable disk")
    client = registry_client(tracking_uri)
    out = pull_model(reference, out_dir, client=client)
    console.print(f"pulled {reference} to {out}/ (policy.yaml, policy/, model/)")


@click.command()
@click.option("--model", "reference", required=True, metavar="MODEL_URI",
              help="models:/NAME@ALIAS, models:/NAME/VERSION (or without models:/).")
@click.option("--input", "input_path", type=click.Path(dir_okay=False), required=True,
              help="Rows to score: CSV, TSV, Parquet, or Criteo TSV with --format criteo.")
@click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "parquet", "criteo"]), default=None,
              help="Input format (default: from the extension).")
@click.option("--output", "output_path", type=click.Path(dir_okay=False), required=True,
              help="Output file, .csv/.tsv/.parquet: the input columns plus 'probability'.")
@click.option("--batch-size", type=click.IntRange(min=1), default=100_000, show_default=True)
@tracking_uri_option
def score(reference, input_path, fmt, output_path, batch_size, tracking_uri) -> None:
    """Score a file with a registered scoring policy; writes the input columns plus 'probability'.

    Example: deepfm score --model models:/ctr@champion --input data/test.tsv --format criteo --output scores.parquet
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from deepfm_tuner.model.data.frames import check_file
    from deepfm_tuner.tuner.cli.console import err
    from deepfm_tuner.tuner.cli.console import out as console
    from deepfm_tuner.tuner.registry.pull import load_version
    from deepfm_tuner.tuner.registry.refs import resolve_model_version
    from deepfm_tuner.tuner.serving.scoring import output_format, score_file

    output_format(output_path)  # fail before loading anything
    check_writable(Path(output_path).parent, "pass --output with a file on a writable disk")
    client = registry_client(tracking_uri)
    mv = resolve_model_version(reference, client)
    check_file(input_path, fmt)
    model = load_version(mv, client)
    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("score", total=None)
        result = score_file(model, input_path, output_path, fmt=fmt, batch_size=batch_size,
                            progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"scored {result.rows:,} rows with {mv.name} v{mv.version} in {result.seconds:.1f}s "
                  f"({result.rows_per_second:,.0f} rows/s) -> {result.output}")


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON (newest first).")
@tracking_uri_option
def history(name, as_json, tracking_uri) -> None:
    """Every move of a registered model's aliases, newest first: when, which version to which, their test AUCs,
    the study and the reason (first champion, replaced, kept as challenger, baseline guard, forced, rollback).

    Example: deepfm history ctr
    """
    from deepfm_tuner.tuner.cli.console import out as console
    from deepfm_tuner.tuner.cli.show import print_history
    from deepfm_tuner.tuner.registry.history import read_history
    from deepfm_tuner.tuner.registry.refs import require_registered_model

    client = registry_client(tracking_uri)
    require_registered_model(client, name)
    events = read_history(client, name)
    if as_json:
        click.echo(json.dumps([event.to_dict() for event in events], indent=2))
    else:
        print_history(console, name, events)


@click.command()
@click.argument("name")
@click.option("--to", "to_version", type=click.IntRange(min=1), default=None, metavar="VERSION",
              help="The version to make champion (default: the champion before the current one, from the history).")
@tracking_uri_option
def rollback(name, to_version, tracking_uri) -> None:
    """Move alias 'champion' back to the previous champion (or to --to VERSION) and record it in the history.
    A version whose stored files fail their checksums is refused.

    Example: deepfm rollback ctr
    """
    from deepfm_tuner.tuner.cli.console import out as console
    from deepfm_tuner.tuner.cli.show import print_rollback
    from deepfm_tuner.tuner.registry.rollback import rollback as roll_back

    print_rollback(console, roll_back(registry_client(tracking_uri), name, to_version))


@click.command()
@click.argument("reference_a", metavar="NAME@A")
@click.argument("reference_b", metavar="NAME@B")
@tracking_uri_option
def diff(reference_a, reference_b, tracking_uri) -> None:
    """Two registered versions side by side: study, trial, run, data fingerprint, scores, and the V1 config and
    training keys that differ. A and B are aliases or versions (NAME@champion, NAME@3, NAME/3).

    Example: deepfm diff ctr@champion ctr@challenger
    """
    from deepfm_tuner.tuner.cli.console import out as console
    from deepfm_tuner.tuner.cli.show import print_diff
    from deepfm_tuner.tuner.registry.diff import diff_versions

    print_diff(console, diff_versions(registry_client(tracking_uri), reference_a, reference_b))
