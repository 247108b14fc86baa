"""Taking a registered version out of the registry: downloaded to a folder (`deepfm pull`), loaded as a pyfunc
model for scoring (`deepfm score`), or checked before a rollback points `champion` at it. Each way a damaged copy
in the artifact store is a one-line CorruptPolicyError that names the version and the fix, not a torch traceback."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow import MlflowClient

from deepfm_tuner.model.checksums import CorruptPolicyError
from deepfm_tuner.model.errors import UserInputError
from deepfm_tuner.model.policy import LOAD_FIX, POLICY_FILE, ScoringPolicy
from deepfm_tuner.tuner.registry.integrity import pull_fix, verify_download
from deepfm_tuner.tuner.registry.refs import parse_model_ref, resolve_model_version, using_client
from deepfm_tuner.tuner.serving.pyfunc import ARTIFACT_KEY


def pull_model(model_uri: str, out_dir: str | Path, *, client: MlflowClient | None = None) -> Path:
    """Download a registered version into `out_dir`:

        out_dir/model/        the MLflow model (MLmodel, code, artifacts): mlflow.pyfunc.load_model works on it
        out_dir/policy/       the scoring-policy directory: model.policy.ScoringPolicy.load works on it
        out_dir/policy.yaml   the version's V1 policy YAML
        out_dir/source.json   which name, version, aliases and run it came from
    """
    client = client or MlflowClient()
    out_dir = Path(out_dir)
    mv = resolve_model_version(model_uri, client)
    for part in ("model", "policy", POLICY_FILE):
        if (out_dir / part).exists():
            raise UserInputError(f"{out_dir / part} already exists; pull into an empty or new --out directory")
    created_out = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    with _removed_if_failed(out_dir if created_out else None), using_client(client), \
            tempfile.TemporaryDirectory(dir=out_dir, prefix=".pull-") as tmp:
        local, policy_src = _download_checked(mv, Path(tmp))  # a damaged store copy is refused before any copy
        shutil.copytree(policy_src, out_dir / "policy")
        shutil.copyfile(policy_src / POLICY_FILE, out_dir / POLICY_FILE)
        shutil.move(str(local), out_dir / "model")
    source = {"model_uri": parse_model_ref(model_uri).uri, "name": mv.name, "version": int(mv.version),
              "aliases": list(mv.aliases), "run_id": mv.run_id, "tracking_uri": client.tracking_uri}
    (out_dir / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    return out_dir


def check_version(mv, client: MlflowClient, fix: str) -> None:
    """The version's stored files are what was registered, and its policy loads; else a CorruptPolicyError that
    names the file and `fix` (a rollback refuses such a version)."""
    with using_client(client), tempfile.TemporaryDirectory(prefix="deepfm-check-") as tmp:
        _download_checked(mv, Path(tmp), fix)


def _download_checked(mv, into: Path, fix: str | None = None) -> tuple[Path, Path]:
    """(the MLflow model folder, its policy folder) of a version downloaded under `into` (inside using_client),
    the policy's files checked against the registered digest and loaded (older versions without checksums too)."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}",
                                                     dst_path=str(into)))
    flavor = mlflow.models.Model.load(str(local)).flavors["python_function"]
    policy_src = local / flavor["artifacts"][ARTIFACT_KEY]["path"]
    verify_download(policy_src, mv, fix)
    ScoringPolicy.load(policy_src, fix=fix or pull_fix(mv.name, mv.version))
    return local, policy_src


@contextlib.contextmanager
def _removed_if_failed(folder: Path | None) -> Iterator[None]:
    """A pull that fails leaves no --out folder it created (nothing half-written)."""
    try:
        yield
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def load_version(mv, client: MlflowClient):
    """A resolved ModelVersion (see `resolve_model_version`) loaded as a pyfunc model from the client's store.
    The policy checks its files while loading; a damaged one names this version and re-promoting as the fix."""
    with using_client(client):
        try:
            return mlflow.pyfunc.load_model(f"models:/{mv.name}/{mv.version}")
        except CorruptPolicyError as exc:  # raised by the policy's checksums in load_context
            raise CorruptPolicyError(f"{mv.name} version {mv.version}: {exc}".replace(
                LOAD_FIX, pull_fix(mv.name, mv.version))) from None
