"""`deepfm pull` and `deepfm score`: thin click commands over the registry (resolve, pull, load a version) and
serving (score a file); MLflow, torch and rich are imported inside the commands, for the CLI's start-up time."""

from __future__ import annotations

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
