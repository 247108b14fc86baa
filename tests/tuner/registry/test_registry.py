"""Promotion with the champion gate, pull, batch scoring, and the `deepfm pull` / `deepfm score` commands."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient  # noqa: E402  (after tuner: quiet defaults)

from deepfm_tuner.model.config import read_policy_yaml
from deepfm_tuner.model.data.frames import read_table
from deepfm_tuner.model.errors import DataError, UserInputError
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.tuner.cli import main
from deepfm_tuner.tuner.registry import promotion as registry
from deepfm_tuner.tuner.registry.promotion import PromotionCheckError, promote_policy
from deepfm_tuner.tuner.registry.pull import load_version, pull_model
from deepfm_tuner.tuner.registry.refs import ModelNotFoundError, RegistryError, parse_model_ref, resolve_model_version
from deepfm_tuner.tuner.serving.scoring import score_file

from conftest import TINY_POLICY, TINY_TRAINING

TAGS = {"study": "tiny", "trial_number": "3", "val_auc": "0.7", "data_fingerprint": "abc123"}


@dataclass
class Store:
    uri: str
    client: MlflowClient
    experiment_id: str

    def finished_run(self) -> str:
        run = self.client.create_run(self.experiment_id)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """A fresh SQLite store used through an explicit client: the process-wide MLflow settings stay untouched."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return Store(uri, client, client.create_experiment("registry", artifact_location=str(root / "artifacts")))


@pytest.fixture(scope="module")
def gate_store(tmp_path_factory) -> Store:
    """A second store for the gate tests: the registry listing of `store` stays what the CLI tests expect."""
    root = tmp_path_factory.mktemp("mlflow_gate")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return Store(uri, client, client.create_experiment("gate", artifact_location=str(root / "artifacts")))


@pytest.fixture(scope="module")
def bad_dir(tiny_prepared, tmp_path_factory) -> Path:
    """Untrained weights on the same encoder: a model no better than chance."""
    torch.manual_seed(0)
    return ScoringPolicy.build(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder).save(
        tmp_path_factory.mktemp("bad") / "policy")


@pytest.fixture(scope="module")
def champion(store, good_dir, test_frame):
    """'ctr' v1 = the trained policy, promoted as the first champion."""
    run_id = store.finished_run()
    result = promote_policy(run_id=run_id, policy_dir=good_dir, test_frame=test_frame, registered_name="ctr",
                            tags=TAGS, client=store.client)
    return run_id, result


def test_first_promotion_becomes_champion_with_tags_and_keeps_run_status(store, champion, good_dir, test_frame):
    run_id, result = champion
    assert (result.version, result.alias, result.model_uri) == (1, "champion", "models:/ctr@champion")
    assert result.previous_champion_auc is None and "first champion" in result.reason
    expected = ScoringPolicy.load(good_dir).predict(test_frame)
    from deepfm_tuner.model.metrics import classification_metrics

    auc, logloss = classification_metrics(test_frame["label"].to_numpy(np.float32), expected)
    assert result.test_auc == pytest.approx(auc, abs=1e-6) and result.test_logloss == pytest.approx(logloss, abs=1e-6)
    version = store.client.get_model_version("ctr", "1")
    assert {k: version.tags[k] for k in TAGS} == TAGS
    assert version.tags["policy_yaml"] == (good_dir / "policy.yaml").read_text()
    assert float(version.tags["test_auc"]) == pytest.approx(result.test_auc, abs=1e-6)
    assert version.run_id == run_id
    assert store.client.get_run(run_id).info.status == "FINISHED"


def test_worse_model_becomes_challenger_and_force_takes_champion(store, champion, bad_dir, test_frame):
    _, first = champion
    worse = promote_policy(run_id=store.finished_run(), policy_dir=bad_dir, test_frame=test_frame,
                           registered_name="ctr", tags=TAGS, client=store.client)
    assert worse.alias == "challenger" and worse.model_uri == f"models:/ctr/{worse.version}"
    assert worse.test_auc < first.test_auc
    assert worse.previous_champion_auc == pytest.approx(first.test_auc, abs=1e-9)
    assert "kept as challenger" in worse.reason
    assert int(store.client.get_model_version_by_alias("ctr", "champion").version) == 1
    assert int(store.client.get_model_version_by_alias("ctr", "challenger").version) == worse.version

    forced = promote_policy(run_id=store.finished_run(), policy_dir=bad_dir, test_frame=test_frame,
                            registered_name="ctr", tags=TAGS, force=True, client=store.client)
    assert forced.alias == "champion" and forced.reason.startswith("forced")
    assert int(store.client.get_model_version_by_alias("ctr", "champion").version) == forced.version


def test_the_gate_records_delong_tags_and_a_worse_model_stays_challenger(gate_store, good_dir, bad_dir, test_frame):
    """Challenger vs champion on the same rows: AUC difference, its 95% CI and p-value as version tags and in
    the message; a significantly worse model does not take `champion`."""
    first = promote_policy(run_id=gate_store.finished_run(), policy_dir=good_dir, test_frame=test_frame,
                           registered_name="ctr_worse", tags=TAGS, client=gate_store.client)
    worse = promote_policy(run_id=gate_store.finished_run(), policy_dir=bad_dir, test_frame=test_frame,
                           registered_name="ctr_worse", tags=TAGS, client=gate_store.client)
    assert worse.alias == "challenger"
    tags = gate_store.client.get_model_version("ctr_worse", str(worse.version)).tags
    diff, low, high, p = (float(tags[f"gate.{k}"]) for k in ("auc_diff", "ci_low", "ci_high", "p_value"))
    assert diff == pytest.approx(worse.test_auc - first.test_auc, abs=1e-5)
    assert low < diff < high < 0 and p < 0.05
    assert (tags["gate.require"], tags["gate.decision"]) == ("not_worse", "kept_challenger")
    assert worse.gate["decision"] == "kept_challenger" and worse.gate["p_value"] == pytest.approx(p, rel=1e-5)
    assert "95% CI [" in worse.reason and "significantly worse" in worse.reason and "p=" in worse.reason


def test_an_equal_model_passes_not_worse_but_not_better(gate_store, good_dir, test_frame):
    """The same policy again: difference 0, p = 1 -> champion under not_worse, challenger under better."""
    kwargs = dict(policy_dir=good_dir, test_frame=test_frame, registered_name="ctr_gate", tags=TAGS,
                  client=gate_store.client)
    promote_policy(run_id=gate_store.finished_run(), **kwargs)
    same = promote_policy(run_id=gate_store.finished_run(), **kwargs)
    assert same.alias == "champion" and same.gate["auc_diff"] == 0.0 and same.gate["p_value"] == 1.0
    assert "not significantly different" in same.reason
    strict = promote_policy(run_id=gate_store.finished_run(), require="better", alpha=0.01, **kwargs)
    assert strict.alias == "challenger" and "require better" in strict.reason
    tags = gate_store.client.get_model_version("ctr_gate", str(strict.version)).tags
    assert (tags["gate.require"], tags["gate.alpha"], tags["gate.decision"]) == ("better", "0.01", "kept_challenger")
    assert int(gate_store.client.get_model_version_by_alias("ctr_gate", "champion").version) == same.version


def test_the_baseline_comparison_says_whether_tuning_helped(gate_store, good_dir, bad_dir, test_frame):
    helped = promote_policy(run_id=gate_store.finished_run(), policy_dir=good_dir, test_frame=test_frame,
                            registered_name="ctr_base", tags=TAGS, client=gate_store.client, baseline_dir=bad_dir)
    assert helped.baseline_message.startswith("tuning helped: +") and "95% CI" in helped.baseline_message
    assert helped.baseline["helped"] and helped.baseline["auc_diff"] > 0
    tags = gate_store.client.get_model_version("ctr_base", str(helped.version)).tags
    assert float(tags["baseline.auc_diff"]) == pytest.approx(helped.baseline["auc_diff"], abs=1e-5)
    assert float(tags["baseline.ci_low"]) > 0 and float(tags["baseline.p_value"]) < 0.05
    flat = promote_policy(run_id=gate_store.finished_run(), policy_dir=good_dir, test_frame=test_frame,
                          registered_name="ctr_base", tags=TAGS, client=gate_store.client, baseline_dir=good_dir)
    assert flat.baseline_message.startswith("no significant gain over the V1 baseline")
    assert not flat.baseline["helped"]


def test_failed_load_back_check_moves_no_alias(store, good_dir, test_frame, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("cannot score")

    monkeypatch.setattr(registry, "predict_frame", broken)
    with pytest.raises(PromotionCheckError, match="failed its load-back check.*no alias moved"):
        promote_policy(run_id=store.finished_run(), policy_dir=good_dir, test_frame=test_frame,
                       registered_name="ctr_broken", tags=TAGS, client=store.client)
    assert store.client.search_model_versions("name = 'ctr_broken'") == []  # no orphan version (nor model)


def test_test_frame_with_one_class_is_refused_before_logging(store, good_dir, test_frame):
    with pytest.raises(DataError, match="only one class"):
        promote_policy(run_id=store.finished_run(), policy_dir=good_dir, test_frame=test_frame.assign(label=0),
                       registered_name="ctr_one_class", tags=TAGS, client=store.client)


def test_pull_writes_policy_yaml_that_round_trips_and_a_loadable_policy(store, champion, good_dir, test_frame,
                                                                       tmp_path):
    out = pull_model("models:/ctr/1", tmp_path / "pulled", client=store.client)
    policy, _ = read_policy_yaml(out / "policy.yaml")
    assert policy == TINY_POLICY
    pulled = ScoringPolicy.load(out / "policy")
    np.testing.assert_allclose(pulled.predict(test_frame), ScoringPolicy.load(good_dir).predict(test_frame))
    assert json.loads((out / "source.json").read_text())["version"] == 1
    assert (out / "model" / "MLmodel").is_file()


@pytest.mark.parametrize("reference, message", [
    ("models:/nope@champion", "no registered model 'nope'"),
    ("ctx", "did you mean 'ctr'"),
    ("ctr@gold", "has no alias 'gold'; versions: 1"),
    ("ctr/99", "has no version 99"),
])
def test_unknown_models_are_one_line_errors(store, champion, reference, message):
    with pytest.raises(ModelNotFoundError, match=message) as info:
        resolve_model_version(reference, store.client)
    assert "\n" not in str(info.value) and isinstance(info.value, UserInputError)


def test_model_references_parse_with_or_without_the_scheme():
    assert parse_model_ref("ctr").uri == "models:/ctr@champion"
    assert parse_model_ref("models:/ctr@challenger").uri == "models:/ctr@challenger"
    assert parse_model_ref("ctr/7").uri == "models:/ctr/7"
    with pytest.raises(RegistryError, match="NAME@alias"):
        parse_model_ref("models:/ctr/latest")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_score_file_appends_probabilities_equal_to_the_policy(store, champion, good_dir, tiny_criteo_dir, tmp_path,
                                                               suffix):
    """The registered version loaded as `deepfm score` loads it, then the file streamed through it."""
    seen = []
    model = load_version(resolve_model_version("ctr/1", store.client), store.client)
    result = score_file(model, tiny_criteo_dir / "test.tsv", tmp_path / f"scores{suffix}", fmt="criteo",
                        batch_size=128, progress=lambda done, total: seen.append((done, total)))
    raw = read_table(tiny_criteo_dir / "test.tsv", "criteo")
    scored = read_table(result.output)
    assert list(scored.columns) == list(raw.columns) + ["probability"] and len(scored) == len(raw) == result.rows
    np.testing.assert_allclose(scored["probability"], ScoringPolicy.load(good_dir).predict(raw), rtol=1e-6, atol=1e-7)
    assert seen[-1] == (len(raw), len(raw)) and len(seen) == -(-len(raw) // 128)
    assert all(total is None for _, total in seen[:-1])  # a streamed TSV's row count is known at its end


def test_score_file_names_a_missing_column(store, champion, test_frame, tmp_path):
    path = tmp_path / "rows.parquet"
    test_frame.drop(columns=["C3", "I5"]).to_parquet(path)
    with pytest.raises(DataError, match="missing column\\(s\\) 'C3', 'I5'"):
        score_file(load_version(resolve_model_version("ctr/1", store.client), store.client), path,
                   tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


# -- CLI ---------------------------------------------------------------------------------------------
def test_cli_score_writes_the_output_and_reports_rows(store, champion, tiny_criteo_dir, tmp_path):
    out = tmp_path / "scores.parquet"
    result = CliRunner().invoke(main, ["score", "--model", "models:/ctr/1", "--input", str(tiny_criteo_dir / "test.tsv"),
                                       "--format", "criteo", "--output", str(out), "--tracking-uri", store.uri])
    assert result.exit_code == 0, result.output
    assert "scored 300 rows with ctr v1" in result.output
    assert pq.read_table(out).column_names[-1] == "probability"


def test_cli_pull_writes_policy_yaml(store, champion, tmp_path):
    result = CliRunner().invoke(main, ["pull", "ctr/1", "--out", str(tmp_path / "p"), "--tracking-uri", store.uri])
    assert result.exit_code == 0, result.output
    assert read_policy_yaml(tmp_path / "p" / "policy.yaml")[0] == TINY_POLICY


def test_cli_unknown_model_exits_2_with_one_line(store, champion, tmp_path):
    result = CliRunner().invoke(main, ["pull", "nope", "--out", str(tmp_path / "p"), "--tracking-uri", store.uri])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: no registered model 'nope' in {store.uri}; registered models: ctr"]


def test_cli_missing_default_store_is_a_one_line_error(in_tmp, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(main, ["score", "--model", "ctr", "--input", "x.csv", "--output", "y.csv"])
    assert result.exit_code == 2 and "no MLflow store at mlruns/mlflow.db" in result.output
