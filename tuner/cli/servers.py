"""`deepfm ui` and `deepfm dashboard`: the MLflow UI and optuna-dashboard on 127.0.0.1 over the configured stores,
refusing a store that does not exist (opening it would create an empty one) and a port already taken."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import click

from deepfm_tuner.model.errors import UserInputError
from deepfm_tuner.tuner.cli.options import load_spec, storage_option, tracking_uri_option
from deepfm_tuner.tuner.stores.locations import missing_sqlite_store, redact, resolve_stores


def _require_store(uri: str, what: str) -> None:
    """A local SQLite store must exist: opening a missing one would create an empty store and serve nothing."""
    path = missing_sqlite_store(uri)
    if path is not None:
        raise UserInputError(f"no {what} at {path}; run 'deepfm tune STUDY.yaml' here first, or point at the "
                             f"right store with --tracking-uri/--storage")


def _require_free_port(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise UserInputError(f"port {port} on 127.0.0.1 is already in use; pass --port with a free port or stop "
                                 f"what listens there") from None


def _exec(program: str, args: list[str]) -> None:
    """Replace this process with `program` of this environment (even if its bin/ is not on PATH)."""
    beside = Path(sys.executable).with_name(program)
    exe = str(beside) if beside.exists() else (shutil.which(program) or program)
    os.execvp(exe, [exe, *args])


@click.command()
@click.argument("study_path", metavar="[STUDY.yaml]", required=False, type=click.Path(dir_okay=False))
@tracking_uri_option
@click.option("--experiment", default=None, help="Print the direct link to this experiment's runs (default: the study's).")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
def ui(study_path, tracking_uri, experiment, port) -> None:
    """Start the MLflow UI on 127.0.0.1 over the configured store; with STUDY.yaml, print the link to its runs.

    Example: deepfm ui studies/quick.yaml --port 5000
    """
    # MLflow and SQLAlchemy: imported when the UI starts
    from deepfm_tuner.tuner.stores.sqlite import artifact_location_for
    from deepfm_tuner.tuner.stores.tracking import resolve_tracking_uri

    spec = load_spec(study_path) if study_path else None
    uri = resolve_stores(None, tracking_uri, spec).tracking_uri
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


@click.command()
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
    spec = load_spec(study_path) if study_path else None
    stores = resolve_stores(storage, None, spec)
    url = stores.storage_url
    _require_store(url, "Optuna storage")
    _require_free_port(port)
    from deepfm_tuner.tuner.stores.optuna_storage import existing_study, resolve_storage  # Optuna: when it starts

    url = resolve_storage(url)
    link = f"http://127.0.0.1:{port}"
    if spec is not None:
        link += f"/dashboard/studies/{existing_study(spec.name, url, study_path)[0]._study_id}"
    click.echo(f"Optuna dashboard on {link} (storage {redact(url)}); Ctrl-C to stop", err=True)
    _exec("optuna-dashboard", [url, "--host", "127.0.0.1", "--port", str(port), "--quiet"])
