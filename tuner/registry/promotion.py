"""Promotion with the champion gate, pulling a registered policy, and batch scoring of a file.

    promote_policy  log the policy as a pyfunc model to its trial's run, register a version, prove it loads and
                    scores, then compare it with the current champion on the same test rows (DeLong's paired AUC
                    test, tuner.stats) and move `champion` unless it is significantly worse (require=not_worse)
                    or only if it is significantly better (require=better); else `challenger`. `force=True`
                    skips the gate. With `baseline_dir`, the same comparison against the V1 baseline policy.
    pull_model      download a registered version: the MLflow model, the policy directory and its V1 policy.yaml.
    score_file      score a CSV/TSV/Parquet/Criteo file with a registered model, batch by batch.

Model references: `NAME` (= NAME@champion), `NAME@alias`, `NAME/VERSION`, or any of these after `models:/`.
Aliases only (`champion`, `challenger`), never the deprecated stages.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from deepfm_tuner.model.data.frames import check_labels, read_table
from deepfm_tuner.model.errors import DataError, UserInputError, did_you_mean
from deepfm_tuner.model.checksums import CorruptPolicyError
from deepfm_tuner.model.policy import LOAD_FIX, POLICY_FILE, ScoringPolicy
from deepfm_tuner.model.metrics import classification_metrics

from deepfm_tuner.tuner.registry.integrity import TAG_DIGEST, discard_version, policy_digest_for, pull_fix, verify_download
from deepfm_tuner.tuner.serving.pyfunc import ARTIFACT_KEY, OUTPUT_COLUMN, ScoringPolicyModel, conform, log_policy_model
from deepfm_tuner.tuner.registry.gate import AucComparison, delong_test, gate

import mlflow  # noqa: E402  (after .pyfunc, which sets the quiet defaults)
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

CHAMPION, CHALLENGER = "champion", "challenger"
TAG_POLICY_YAML, TAG_TEST_AUC, TAG_TEST_LOGLOSS, TAG_REASON = "policy_yaml", "test_auc", "test_logloss", "promotion"
OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_NAME = r"[^/@:\s][^/@:]*"
_REFERENCE = re.compile(rf"^(?:models:/)?(?P<name>{_NAME})(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))?$")


class RegistryError(UserInputError):
    """A model reference that does not parse, or names nothing in the registry."""


class ModelNotFoundError(RegistryError):
    """The registered model, alias or version does not exist."""


class PromotionCheckError(RegistryError):
    """A registered version failed to load or score; no alias was moved."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: exactly one of alias / version is set."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_model_ref(reference: str) -> ModelRef:
    """`NAME`, `NAME@alias`, `NAME/VERSION`, optionally prefixed by `models:/`; bare NAME means NAME@champion."""
    match = _REFERENCE.match(reference.strip())
    if not match:
        raise RegistryError(f"cannot read model reference {reference!r}; use NAME, NAME@alias or NAME/VERSION "
                            f"(optionally prefixed by models:/), e.g. models:/ctr@champion")
    name, alias, version = match.group("name"), match.group("alias"), match.group("version")
    if alias is None and version is None:
        alias = CHAMPION
    return ModelRef(name, alias, version)


def resolve_model_version(reference: str, client: MlflowClient | None = None):
    """The registry's ModelVersion a reference points at; a one-line ModelNotFoundError otherwise."""
    client = client or MlflowClient()
    ref = parse_model_ref(reference)
    try:
        client.get_registered_model(ref.name)
    except MlflowException:
        names = [m.name for m in client.search_registered_models(max_results=1000)]
        known = f"; registered models: {', '.join(sorted(names)[:10])}" if names else "; the registry is empty"
        raise ModelNotFoundError(f"no registered model '{ref.name}' in {client.tracking_uri}"
                                 f"{did_you_mean(ref.name, names)}{known}") from None
    try:
        if ref.alias:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        return client.get_model_version(ref.name, ref.version)
    except MlflowException:
        what = f"alias '{ref.alias}'" if ref.alias else f"version {ref.version}"
        raise ModelNotFoundError(f"registered model '{ref.name}' has no {what}; {_versions_hint(client, ref.name)}") \
            from None


def _versions_hint(client: MlflowClient, name: str) -> str:
    model = client.get_registered_model(name)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    aliases = ", ".join(f"@{a}" for a in sorted(model.aliases)) or "none"
    shown = ", ".join(map(str, versions[-10:])) or "none"
    return f"versions: {shown}; aliases: {aliases}"


@contextlib.contextmanager
def _using(client: MlflowClient) -> Iterator[None]:
    """Point mlflow's fluent API (runs, load_model, downloads) at the client's stores for the duration, then
    restore the previous settings exactly (mlflow's setters also write MLFLOW_*_URI into the environment)."""
    tracking, registry = client.tracking_uri, client._registry_uri
    if mlflow.get_tracking_uri() == tracking and mlflow.get_registry_uri() == registry:
        yield
        return
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- scoring helpers -------------------------------------------------------------------------------
def predict_frame(pyfunc_model, frame: pd.DataFrame, source: str = "input") -> np.ndarray:
    """Probabilities from a loaded pyfunc model for a raw frame (conformed to its signature first)."""
    schema = _check_columns(pyfunc_model, frame, source)
    return np.asarray(pyfunc_model.predict(conform(frame, schema)), dtype=np.float64).reshape(-1)


def batch_scorer(pyfunc_model, source: str) -> Callable[[pd.DataFrame], np.ndarray]:
    """The fastest exact way to score many frames with a loaded model: a scoring policy's own `predict` when the
    model is one (no decoding of dictionary-encoded tokens for MLflow's type check, then hashing them again;
    the encoder still names a missing or non-numeric column), else `predict_frame`."""
    python_model = pyfunc_model.unwrap_python_model() if hasattr(pyfunc_model, "unwrap_python_model") else None
    if not isinstance(python_model, ScoringPolicyModel):
        return lambda frame: predict_frame(pyfunc_model, frame, source)

    def score(frame: pd.DataFrame) -> np.ndarray:
        _check_columns(pyfunc_model, frame, source)
        return python_model.policy.predict(frame).astype(np.float64)

    return score


def _check_columns(pyfunc_model, frame: pd.DataFrame, source: str):
    schema = pyfunc_model.metadata.get_input_schema()
    if schema is not None and schema.has_input_names():
        missing = [c for c in schema.input_names() if c not in frame.columns]
        if missing:
            shown = ", ".join(f"'{c}'" for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(f"{source}: missing column(s) {shown}{did_you_mean(missing[0], map(str, frame.columns))}"
                            f"; the model needs {len(schema.input_names())} feature columns")
    return schema


# -- promotion -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromotionResult:
    name: str
    version: int
    alias: str  # "champion" or "challenger"
    model_uri: str  # models:/NAME@champion when promoted, else models:/NAME/VERSION
    test_auc: float
    test_logloss: float
    previous_champion_auc: float | None  # None when there was no champion
    previous_champion_version: int | None
    reason: str
    gate: dict | None = None  # challenger - champion: auc_diff, ci_low, ci_high, p_value, require, alpha, decision
    baseline: dict | None = None  # challenger - V1 baseline: auc_diff, ci_low, ci_high, p_value, helped
    baseline_message: str = ""  # "tuning helped: ..." or "no significant gain over the V1 baseline ..."

    @property
    def promoted(self) -> bool:
        return self.alias == CHAMPION

    def to_dict(self) -> dict:
        return asdict(self)


def promote_policy(
    *,
    run_id: str,
    policy_dir: str | Path,
    test_frame: pd.DataFrame,
    registered_name: str,
    tags: dict[str, str],
    force: bool = False,
    client: MlflowClient | None = None,
    require: str = "not_worse",
    alpha: float = 0.05,
    baseline_dir: str | Path | None = None,
) -> PromotionResult:
    """Log, register, verify and (if it passes the champion gate on `test_frame`) promote a policy.

    The gate: DeLong's paired test of test AUC(policy) - AUC(champion) on the same rows; `require` is
    "not_worse" (promote unless significantly worse at `alpha`) or "better" (only if significantly better).
    `baseline_dir` (the study's V1 baseline policy) gets the same comparison, recorded as `baseline.*` tags."""
    if require not in ("not_worse", "better") or not 0 < alpha < 1:
        raise UserInputError(f"promotion gate: require must be not_worse or better and 0 < alpha < 1, "
                             f"got require={require!r}, alpha={alpha!r}")
    client = client or MlflowClient()
    policy_dir = Path(policy_dir)
    schema = ScoringPolicy.load(policy_dir).encoder.schema
    digest = policy_digest_for(policy_dir)
    labels = check_labels(test_frame, schema.label, "promotion test frame")
    if not 0 < labels.sum() < len(labels):
        raise DataError(f"promotion test frame: column '{schema.label}' holds only one class in {len(labels):,} rows; "
                        f"AUC needs clicks and non-clicks, so use a larger or different test set")
    with _using(client):
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise RegistryError(f"MLflow run {run_id} does not exist in {client.tracking_uri}") from None
        info = _log_to_run(client, run, policy_dir, test_frame)
        created = False
        try:
            client.get_registered_model(registered_name)
        except MlflowException:
            created = True
            client.create_registered_model(registered_name, description="DeepFM click-through-rate scoring policy")
        version_tags = {str(k): str(v) for k, v in tags.items()}
        version_tags[TAG_POLICY_YAML] = (policy_dir / POLICY_FILE).read_text()
        version_tags[TAG_DIGEST] = digest
        mv = client.create_model_version(registered_name, source=info.model_uri, run_id=run_id, tags=version_tags,
                                         model_id=info.model_id)
        _link_version(client, info.model_id, mv)
        version = int(mv.version)

        # -- prove the registered version loads and scores before any alias moves --------------------
        try:
            loaded = mlflow.pyfunc.load_model(f"models:/{registered_name}/{version}")
            probabilities = predict_frame(loaded, test_frame, "promotion test frame")
            if len(probabilities) != len(test_frame) or not np.isfinite(probabilities).all():
                raise ValueError(f"got {len(probabilities)} scores (non-finite included) for {len(test_frame)} rows")
        except Exception as exc:  # anything at all: the version must not be promoted
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            discard_version(client, registered_name, version, created)  # no orphan version is left behind
            raise PromotionCheckError(f"registered version {version} of '{registered_name}' failed its load-back "
                                      f"check ({first}); it was deleted and no alias moved") from exc
        test_auc, test_logloss = classification_metrics(labels, probabilities)
        client.set_model_version_tag(registered_name, str(version), TAG_TEST_AUC, f"{test_auc:.6f}")
        client.set_model_version_tag(registered_name, str(version), TAG_TEST_LOGLOSS, f"{test_logloss:.6f}")

        # -- the champion gate: both models scored on the same rows, DeLong's paired test ----------------
        champion_scores, champion_version = _champion_scores(client, registered_name, test_frame, force)
        champion_auc = None if champion_scores is None else classification_metrics(labels, champion_scores)[0]
        rows = f"{len(test_frame):,} test rows"
        gate_tags: dict[str, str] = {"gate.require": require, "gate.alpha": f"{alpha:g}"}
        gate_info: dict | None = None
        if champion_version is None:
            alias, decision = CHAMPION, "first_champion"
            reason = f"first champion of '{registered_name}' (test AUC {test_auc:.4f} on {rows})"
        else:
            comparison = None if champion_scores is None else delong_test(labels, probabilities, champion_scores)
            versus = f"test AUC {test_auc:.4f} vs champion v{champion_version}'s " + (
                "n/a" if champion_auc is None else f"{champion_auc:.4f}") + f" on the same {rows}"
            passes = False  # no comparison only when the champion cannot score and force is set
            if comparison is not None:
                passes, word = gate(comparison, require, alpha)
                versus += f": {comparison.describe()}, {word} (require {require}, alpha {alpha:g})"
                gate_tags.update(_comparison_tags("gate", comparison))
                gate_info = {**_comparison_dict(comparison), "require": require, "alpha": alpha}
            if force:
                alias, decision, reason = CHAMPION, "forced", f"forced: {versus}"
            elif passes:
                alias, decision, reason = CHAMPION, "promoted", versus
            else:
                alias, decision = CHALLENGER, "kept_challenger"
                reason = f"{versus}; kept as challenger (force to promote anyway)"
        gate_tags["gate.decision"] = decision
        if gate_info is not None:
            gate_info["decision"] = decision
        for key, value in gate_tags.items():
            client.set_model_version_tag(registered_name, str(version), key, value)

        # -- did tuning pay? the same comparison against the study's V1 baseline ---------------------
        baseline_info, baseline_message = None, ""
        if baseline_dir is not None:
            try:
                same = Path(baseline_dir).resolve() == policy_dir.resolve()
                base_scores = probabilities if same else np.asarray(
                    ScoringPolicy.load(baseline_dir).predict(test_frame), dtype=np.float64).reshape(-1)
                versus_base = delong_test(labels, probabilities, base_scores)
            except Exception as exc:  # noqa: BLE001 - informative only: never blocks a promotion
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                baseline_message = f"could not compare with the V1 baseline ({first})"
            else:
                helped = versus_base.diff > 0 and versus_base.p_value < alpha
                baseline_info = {**_comparison_dict(versus_base), "helped": helped}
                baseline_message = (f"tuning helped: {versus_base.describe()} over the V1 baseline" if helped else
                                    f"no significant gain over the V1 baseline ({versus_base.describe()})")
                for key, value in _comparison_tags("baseline", versus_base).items():
                    client.set_model_version_tag(registered_name, str(version), key, value)
        client.set_registered_model_alias(registered_name, alias, str(version))
        client.set_model_version_tag(registered_name, str(version), TAG_REASON, reason)
    uri = f"models:/{registered_name}@{CHAMPION}" if alias == CHAMPION else f"models:/{registered_name}/{version}"
    return PromotionResult(registered_name, version, alias, uri, test_auc, test_logloss, champion_auc,
                           champion_version, reason, gate_info, baseline_info, baseline_message)


def _comparison_dict(c: AucComparison) -> dict:
    return {"auc_diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value}


def _comparison_tags(prefix: str, c: AucComparison) -> dict[str, str]:
    return {f"{prefix}.auc_diff": f"{c.diff:.6f}", f"{prefix}.ci_low": f"{c.ci_low:.6f}",
            f"{prefix}.ci_high": f"{c.ci_high:.6f}", f"{prefix}.p_value": f"{c.p_value:.6g}"}


# the run's summary metrics the logged model carries: the trial's score (score_<metric>) and its best epoch
MODEL_METRIC_PREFIXES = ("score_", "best_epoch")


def _log_to_run(client: MlflowClient, run, policy_dir: Path, test_frame: pd.DataFrame):
    """Log the pyfunc model into `run`, leaving the run in the status (and end time) it had. The logged model gets
    the run's per-epoch metrics of its best epoch (not epoch 0's) and the trial's score (`score_<metric>`)."""
    run_id, status, end_time = run.info.run_id, run.info.status, run.info.end_time
    step = max(0, int(run.data.metrics.get("best_epoch", 1)) - 1)  # best_epoch counts from 1, steps from 0

    def log():
        info = log_policy_model(policy_dir, input_example=test_frame.head(5), step=step)
        _log_model_metrics(client, run, info.model_id)
        return info

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        return log()
    try:
        with mlflow.start_run(run_id=run_id, nested=active is not None):
            info = log()
    finally:
        if status == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, status=status, end_time=end_time)
    return info


def _log_model_metrics(client: MlflowClient, run, model_id: str) -> None:
    """Put the run's score metrics on the logged model: each re-logged exactly as recorded (same value, step and
    timestamp) with the model's id, as MLflow itself links a run's metrics to a model, so the run's history gains
    no duplicate."""
    from mlflow.entities import Metric

    have = {m.key for m in (client.get_logged_model(model_id).metrics or [])}
    metrics = []
    for key in sorted(run.data.metrics):
        if key.startswith(MODEL_METRIC_PREFIXES) and key not in have:
            last = max(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
            metrics.append(Metric(key, last.value, last.timestamp, last.step, model_id=model_id, run_id=run.info.run_id))
    if metrics:
        client.log_batch(run.info.run_id, metrics=metrics)


def _link_version(client: MlflowClient, model_id: str | None, mv) -> None:
    """Record the version on its logged model (tag `mlflow.modelVersions`, as `mlflow.register_model` does): the
    UI's logged-model page reads it to show the version instead of 'Not registered' / 'Register model'."""
    if not model_id:
        return
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    existing = client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS)
    versions = (json.loads(existing) if existing else []) + [{"name": mv.name, "version": mv.version}]
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})


def _champion_scores(client: MlflowClient, name: str, test_frame: pd.DataFrame,
                     force: bool) -> tuple[np.ndarray | None, int | None]:
    """(the current champion's probabilities on `test_frame`, its version), or (None, None) when there is none;
    (None, version) when it cannot score and `force` is set."""
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    try:
        loaded = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
        return predict_frame(loaded, test_frame, "promotion test frame"), int(champion.version)
    except Exception as exc:
        if force:
            return None, int(champion.version)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PromotionCheckError(f"the current champion (version {champion.version} of '{name}') cannot score "
                                  f"the test frame ({first}); compare by hand or force the promotion") from exc


# -- pull ------------------------------------------------------------------------------------------
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
    with _removed_if_failed(out_dir if created_out else None), _using(client), \
            tempfile.TemporaryDirectory(dir=out_dir, prefix=".pull-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}", dst_path=tmp))
        flavor = mlflow.models.Model.load(str(local)).flavors["python_function"]
        policy_src = local / flavor["artifacts"][ARTIFACT_KEY]["path"]
        verify_download(policy_src, mv)  # a damaged store copy is refused before anything is copied
        ScoringPolicy.load(policy_src, fix=pull_fix(mv.name, mv.version))  # and it must load (older versions too)
        shutil.copytree(policy_src, out_dir / "policy")
        shutil.copyfile(policy_src / POLICY_FILE, out_dir / POLICY_FILE)
        shutil.move(str(local), out_dir / "model")
    source = {"model_uri": parse_model_ref(model_uri).uri, "name": mv.name, "version": int(mv.version),
              "aliases": list(mv.aliases), "run_id": mv.run_id, "tracking_uri": client.tracking_uri}
    (out_dir / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    return out_dir


@contextlib.contextmanager
def _removed_if_failed(folder: Path | None) -> Iterator[None]:
    """A pull that fails leaves no --out folder it created (nothing half-written)."""
    try:
        yield
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise


# -- batch scoring ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreResult:
    rows: int
    seconds: float
    output: Path
    name: str
    version: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def output_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserInputError(f"cannot tell the output format of {path}; name it .csv, .tsv or .parquet")
    return OUTPUT_FORMATS[suffix]


def score_file(
    model_uri: str,
    input_path: str | Path,
    output_path: str | Path,
    *,
    fmt: str | None = None,
    batch_size: int = 100_000,
    progress: Callable[[int, int], None] | None = None,
    client: MlflowClient | None = None,
) -> ScoreResult:
    """Score every row of `input_path` with a registered model; write the input columns plus `probability`.

    The output format follows `output_path`'s extension (.csv, .tsv, .parquet). `progress(done, total)` is called
    after each batch of `batch_size` rows.
    """
    if batch_size < 1:
        raise UserInputError(f"batch_size must be >= 1, got {batch_size}")
    kind = output_format(output_path)
    client = client or MlflowClient()
    mv = resolve_model_version(model_uri, client)
    frame = read_table(input_path, fmt)
    with _using(client):
        try:
            loaded = mlflow.pyfunc.load_model(f"models:/{mv.name}/{mv.version}")
        except CorruptPolicyError as exc:  # raised by the policy's checksums in load_context
            raise CorruptPolicyError(f"{mv.name} version {mv.version}: {exc}".replace(
                LOAD_FIX, pull_fix(mv.name, mv.version))) from None
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    started, total, writer, schema = time.perf_counter(), len(frame), None, None
    score = batch_scorer(loaded, str(input_path))
    try:
        for start in range(0, total, batch_size):
            chunk = frame.iloc[start : start + batch_size]
            scores = score(chunk)
            table = pa.Table.from_pandas(chunk, preserve_index=False).append_column(OUTPUT_COLUMN, pa.array(scores))
            if writer is None:
                schema = table.schema
                writer = (pq.ParquetWriter(output_path, schema) if kind == "parquet" else pacsv.CSVWriter(
                    output_path, schema, write_options=pacsv.WriteOptions(delimiter="\t" if kind == "tsv" else ",")))
            writer.write_table(table.cast(schema))
            if progress is not None:
                progress(min(start + batch_size, total), total)
    finally:
        if writer is not None:
            writer.close()
    return ScoreResult(total, time.perf_counter() - started, output_path, mv.name, int(mv.version))
