"""Promotion: a trained policy becomes a registered version, and `champion` only if it passes the gate.

    promote_policy  log the policy as a pyfunc model to its trial's run, register a version, prove it loads and
                    scores, then compare it with the current champion on the same test rows (DeLong's paired AUC
                    test, registry.gate) and move `champion` unless it is significantly worse (require=not_worse)
                    or only if it is significantly better (require=better); else `challenger`. `force=True`
                    skips the gate. With `baseline_dir`, the same comparison against the V1 baseline policy.
                    Idempotent: a checkpoint (source run + policy digest) already registered under the name is
                    compared and aliased, not registered again; a refused candidate leaves no version behind.
                    Every alias move is recorded in the model's history (registry.history).
    registered_copy the version already holding a checkpoint, found by its run id and the policy_sha256 tag
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_MODEL_VERSIONS

from deepfm_tuner.model.data.frames import check_labels
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.metrics import classification_metrics
from deepfm_tuner.model.policy import POLICY_FILE, ScoringPolicy
from deepfm_tuner.tuner.registry.gate import AucComparison, delong_test, gate
from deepfm_tuner.tuner.registry.history import ACTION_OF_DECISION, move_alias
from deepfm_tuner.tuner.registry.integrity import TAG_DIGEST, discard_version, policy_digest_for
from deepfm_tuner.tuner.registry.lock import registry_lock
from deepfm_tuner.tuner.registry.refs import CHALLENGER, CHAMPION, RegistryError, using_client
from deepfm_tuner.tuner.serving.pyfunc import log_policy_model
from deepfm_tuner.tuner.serving.scoring import predict_frame

TAG_POLICY_YAML, TAG_TEST_AUC, TAG_TEST_LOGLOSS, TAG_REASON = "policy_yaml", "test_auc", "test_logloss", "promotion"


class PromotionCheckError(RegistryError):
    """A registered version failed to load or score; no alias was moved."""


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
    registered: bool = True  # False: the checkpoint was already registered as this version (nothing new)
    reference: dict | None = None  # this version - the study's tree-model reference: type, test_auc, auc_diff, ...
    reference_message: str = ""  # the comparison in one line, with the advice when the tree model is better

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
    test_dataset: Dataset | None = None,
) -> PromotionResult:
    """Log, register, verify and (if it passes the champion gate on `test_frame`) promote a policy.

    The gate: DeLong's paired test of test AUC(policy) - AUC(champion) on the same rows; `require` is
    "not_worse" (promote unless significantly worse at `alpha`) or "better" (only if significantly better).
    `baseline_dir` (the study's V1 baseline policy) gets the same comparison, recorded as `baseline.*` tags.
    `test_dataset` (tuner.stores.datasets.part_dataset) names `test_frame` in MLflow: the test scores go on the
    logged model with it, so the model page's "Datasets used" shows what the model was scored on.

    Idempotent: a checkpoint already registered under the name (same source run, same policy digest) is not
    registered again; that version is compared and, if it wins, aliased. A candidate refused on the way (it does
    not load or score, the champion cannot be compared) leaves no new version behind. The whole promotion holds
    the model's registry lock (registry.lock), so concurrent promotions neither duplicate nor interleave."""
    client = client or MlflowClient()
    policy_dir = Path(policy_dir)
    schema = ScoringPolicy.load(policy_dir).encoder.schema
    digest = policy_digest_for(policy_dir)
    labels = check_labels(test_frame, schema.label, "promotion test frame")
    if not 0 < labels.sum() < len(labels):
        raise DataError(f"promotion test frame: column '{schema.label}' holds only one class in {len(labels):,} rows; "
                        f"AUC needs clicks and non-clicks, so use a larger or different test set")
    with using_client(client):
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise RegistryError(f"MLflow run {run_id} does not exist in {client.tracking_uri}") from None
        with registry_lock(client, registered_name, f"the promotion of run {run_id}"):
            existing = registered_copy(client, registered_name, run_id, digest)
            if existing is not None and CHAMPION in existing.aliases:
                return _already_champion(existing, run_id)
            if existing is None:
                version, created_model, model_id = _register(client, run, registered_name, policy_dir, test_frame,
                                                             tags, digest)
            else:
                version, created_model, model_id = int(existing.version), None, None
            try:
                result = _gate_and_alias(client, registered_name, version, labels, test_frame, policy_dir,
                                         new=existing is None, force=force, require=require, alpha=alpha,
                                         baseline_dir=baseline_dir, guarded=tags.get("chosen_by") == "baseline_guard")
                if test_dataset is not None and model_id is not None:  # a model logged now: scored once, here
                    _log_test_scores(client, run, model_id, test_dataset, {TAG_TEST_AUC: result.test_auc,
                                                                           TAG_TEST_LOGLOSS: result.test_logloss})
                return result
            except BaseException:  # a refused candidate leaves no version behind (one already aliased stays)
                if created_model is not None and not _holds_an_alias(client, registered_name, version):
                    discard_version(client, registered_name, version, created_model, model_id)
                raise


def registered_copy(client: MlflowClient, name: str, run_id: str, digest: str):
    """The version of `name` already holding this checkpoint (registered from `run_id`, same policy digest), or
    None; of several (registered before promotion was idempotent) the champion, else the oldest."""
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    same = [v for v in versions if (v.tags or {}).get(TAG_DIGEST) == digest]
    if not same:
        return None
    best = min(same, key=lambda v: (CHAMPION not in _aliases(client, v), int(v.version)))
    return client.get_model_version(name, best.version)  # with its aliases, which a search leaves out


def _holds_an_alias(client: MlflowClient, name: str, version: int) -> bool:
    """Whether an alias points at the version (True when the registry cannot tell: never delete one in use)."""
    try:
        return bool(client.get_model_version(name, str(version)).aliases)
    except Exception:  # noqa: BLE001
        return True


def _aliases(client: MlflowClient, mv) -> list[str]:
    return list(client.get_model_version(mv.name, mv.version).aliases or [])


def _already_champion(mv, run_id: str) -> PromotionResult:
    tags = mv.tags or {}
    return PromotionResult(
        mv.name, int(mv.version), CHAMPION, f"models:/{mv.name}@{CHAMPION}", float(tags.get(TAG_TEST_AUC, "nan")),
        float(tags.get(TAG_TEST_LOGLOSS, "nan")), None, None,
        f"already the champion: version {mv.version} holds this checkpoint (run {run_id}); nothing registered, no "
        f"alias moved", registered=False)


def _register(client: MlflowClient, run, name: str, policy_dir: Path, test_frame: pd.DataFrame,
              tags: dict[str, str], digest: str) -> tuple[int, bool, str | None]:
    """Log the policy to its run and register it: (the new version, whether this created the registered model,
    the logged model's id)."""
    info = _log_to_run(client, run, policy_dir, test_frame)
    created = False
    try:
        client.get_registered_model(name)
    except MlflowException:
        created = True
        client.create_registered_model(name, description="DeepFM click-through-rate scoring policy")
    version_tags = {str(k): str(v) for k, v in tags.items()}
    version_tags[TAG_POLICY_YAML] = (policy_dir / POLICY_FILE).read_text()
    version_tags[TAG_DIGEST] = digest
    try:
        mv = client.create_model_version(name, source=info.model_uri, run_id=run.info.run_id, tags=version_tags,
                                         model_id=info.model_id)
    except BaseException:
        if created:  # the registered model this promotion made is still empty: nothing half-written
            with contextlib.suppress(Exception):
                client.delete_registered_model(name)
        raise
    _link_version(client, info.model_id, mv)
    return int(mv.version), created, info.model_id


def _gate_and_alias(client: MlflowClient, registered_name: str, version: int, labels: np.ndarray,
                    test_frame: pd.DataFrame, policy_dir: Path, *, new: bool, force: bool, require: str,
                    alpha: float, baseline_dir: str | Path | None, guarded: bool) -> PromotionResult:
    """Prove the version loads and scores, gate it against the champion (and the V1 baseline), move an alias and
    record the move in the model's history (`guarded`: the candidate is the V1 baseline the guard chose)."""
    # -- prove the registered version loads and scores before any alias moves --------------------
    try:
        loaded = mlflow.pyfunc.load_model(f"models:/{registered_name}/{version}")
        probabilities = predict_frame(loaded, test_frame, "promotion test frame")
        if len(probabilities) != len(test_frame) or not np.isfinite(probabilities).all():
            raise ValueError(f"got {len(probabilities)} scores (non-finite included) for {len(test_frame)} rows")
    except Exception as exc:  # anything at all: the version must not be promoted
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        what = ("it was deleted and no alias moved" if new else
                "it holds this checkpoint from an earlier promotion; no alias moved: delete that version (its stored "
                "files are damaged) and promote again")
        raise PromotionCheckError(f"registered version {version} of '{registered_name}' failed its load-back "
                                  f"check ({first}); {what}") from exc
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
    client.set_model_version_tag(registered_name, str(version), TAG_REASON, reason)
    action = "baseline_guard" if guarded and alias == CHAMPION else ACTION_OF_DECISION[decision]
    move_alias(client, registered_name, alias, version, action=action, reason=reason)  # the last step
    uri = f"models:/{registered_name}@{CHAMPION}" if alias == CHAMPION else f"models:/{registered_name}/{version}"
    return PromotionResult(registered_name, version, alias, uri, test_auc, test_logloss, champion_auc,
                           champion_version, reason, gate_info, baseline_info, baseline_message, registered=new)


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
    have = {m.key for m in (client.get_logged_model(model_id).metrics or [])}
    metrics = []
    for key in sorted(run.data.metrics):
        if key.startswith(MODEL_METRIC_PREFIXES) and key not in have:
            last = max(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
            metrics.append(Metric(key, last.value, last.timestamp, last.step, model_id=model_id, run_id=run.info.run_id))
    if metrics:
        client.log_batch(run.info.run_id, metrics=metrics)


def _log_test_scores(client: MlflowClient, run, model_id: str | None, dataset: Dataset,
                     scores: dict[str, float]) -> None:
    """The test scores as the logged model's metrics on `dataset` (the model page lists a model's metrics'
    datasets as "Datasets used"); the run gets the dataset as a test input unless it logged it when it trained."""
    if not model_id:
        return
    if not any((i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}.get(MLFLOW_DATASET_CONTEXT))
               == (dataset.name, dataset.digest, "test") for i in run.inputs.dataset_inputs):
        client.log_inputs(run.info.run_id, datasets=[DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, "test")])])
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[
        Metric(key, value, now, 0, model_id=model_id, run_id=run.info.run_id, dataset_name=dataset.name,
               dataset_digest=dataset.digest) for key, value in scores.items()])


def _link_version(client: MlflowClient, model_id: str | None, mv) -> None:
    """Record the version on its logged model (tag `mlflow.modelVersions`, as `mlflow.register_model` does): the
    UI's logged-model page reads it to show the version instead of 'Not registered' / 'Register model'."""
    if not model_id:
        return
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
                                  f"the test frame ({first}); no alias moved and no new version was kept: compare "
                                  f"by hand or force the promotion") from exc
