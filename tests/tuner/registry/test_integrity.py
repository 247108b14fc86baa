"""Issue #11 item 12: a policy's files are checked (checksums.json, the registry's digest tag) before `pull`,
`score` and `evaluate` use them; a damaged copy is one line and exit 2; a failed load-back check leaves no
version behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient  # noqa: E402

from deepfm_tuner.model.checksums import CHECKSUMS_FILE, CorruptPolicyError, file_sha256
from deepfm_tuner.model.data.frames import split_rows
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import train
from deepfm_tuner.tuner.cli import main
from deepfm_tuner.tuner.registry import promotion as registry
from deepfm_tuner.tuner.registry.promotion import PromotionCheckError, promote_policy

from conftest import TINY_POLICY, TINY_TRAINING
from support import assert_one_line_error, stored_policy_dir, truncate

TAGS = {"study": "tiny", "trial_number": "0"}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def policy_dir(tiny_prepared, tmp_path_factory) -> Path:
    result = train(tiny_prepared, TINY_POLICY, TINY_TRAINING.replace(max_epochs=1))
    return ScoringPolicy(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder, result.model, {}).save(
        tmp_path_factory.mktemp("policy") / "policy")


@pytest.fixture(scope="module")
def test_frame(tiny_frame):
    return tiny_frame.iloc[split_rows(len(tiny_frame), seed=0).test].reset_index(drop=True)


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("integrity", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.set_terminated(run_id, "FINISHED")
    return uri, client, run_id


def test_saved_policy_has_checksums_and_load_names_a_truncated_file(policy_dir, tmp_path):
    import shutil

    listed = json.loads((policy_dir / CHECKSUMS_FILE).read_text())["files"]
    assert {"policy.yaml", "training.yaml", "encoder.json", "weights.pt", "metrics.json"} <= set(listed)
    copy = Path(shutil.copytree(policy_dir, tmp_path / "copy"))
    truncate(copy / "weights.pt")
    with pytest.raises(CorruptPolicyError, match=r"weights.pt is corrupt .*truncated or altered.*deepfm pull") as info:
        ScoringPolicy.load(copy)
    assert "\n" not in str(info.value)
    (copy / CHECKSUMS_FILE).unlink()  # a directory from before checksums: still one line, not a torch traceback
    with pytest.raises(CorruptPolicyError, match=r"weights.pt cannot be read"):
        ScoringPolicy.load(copy)


def test_evaluate_refuses_a_truncated_policy(policy_dir, tiny_criteo_dir, tmp_path):
    import shutil

    copy = Path(shutil.copytree(policy_dir, tmp_path / "copy"))
    truncate(copy / "weights.pt")
    result = run("evaluate", "--model", copy, "--data", tiny_criteo_dir / "test.tsv", "--format", "criteo")
    assert_one_line_error(result, f"{copy / 'weights.pt'} is corrupt", "re-promote")


def test_pull_and_score_refuse_a_version_damaged_in_the_artifact_store(store, policy_dir, test_frame, tmp_path,
                                                                        tiny_criteo_dir):
    uri, client, run_id = store
    promoted = promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=test_frame, registered_name="ctr",
                              tags=TAGS, client=client)
    version = client.get_model_version("ctr", str(promoted.version))
    stored = stored_policy_dir(client, "ctr", str(promoted.version))
    assert version.tags["policy_sha256"] == file_sha256(stored / CHECKSUMS_FILE)  # the digest recorded at registration
    truncate(stored / "weights.pt")

    result = run("pull", "ctr@champion", "--out", tmp_path / "pulled", "--tracking-uri", uri)
    assert_one_line_error(result, "weights.pt is corrupt", "re-promote it")
    assert not (tmp_path / "pulled").exists()  # nothing half-written

    result = run("score", "--model", "models:/ctr@champion", "--input", tiny_criteo_dir / "test.tsv", "--format",
                 "criteo", "--output", tmp_path / "scores.csv", "--tracking-uri", uri)
    assert_one_line_error(result, "ctr version 1", "weights.pt is corrupt", "re-promote it")
    assert not (tmp_path / "scores.csv").exists()


def test_pull_refuses_checksums_that_differ_from_the_registered_digest(store, policy_dir, test_frame, tmp_path):
    uri, client, run_id = store
    promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=test_frame, registered_name="ctr", tags=TAGS,
                   client=client)
    stored = stored_policy_dir(client, "ctr", "1")
    truncate(stored / "weights.pt")  # and the checksums rewritten to match: only the registry's digest can tell
    from deepfm_tuner.model.checksums import write_checksums

    write_checksums(stored)
    result = run("pull", "ctr/1", "--out", tmp_path / "pulled", "--tracking-uri", uri)
    assert_one_line_error(result, "checksums.json does not match the digest recorded at registration")


def test_a_failed_load_back_check_leaves_no_model_version(store, policy_dir, test_frame, monkeypatch):
    _, client, run_id = store

    def broken(*args, **kwargs):
        raise RuntimeError("cannot score")

    monkeypatch.setattr(registry, "predict_frame", broken)
    with pytest.raises(PromotionCheckError, match="failed its load-back check.*deleted and no alias moved"):
        promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=test_frame, registered_name="ctr_broken",
                       tags=TAGS, client=client)
    assert client.search_model_versions("name = 'ctr_broken'") == []
    assert [m.name for m in client.search_registered_models()] == []  # created by this promotion: removed too


def test_pull_load_checks_a_version_registered_before_checksums(store, policy_dir, test_frame, tmp_path):
    uri, client, run_id = store
    promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=test_frame, registered_name="ctr", tags=TAGS,
                   client=client)
    stored = stored_policy_dir(client, "ctr", "1")
    (stored / CHECKSUMS_FILE).unlink()  # as a version registered before checksums existed
    client.delete_model_version_tag("ctr", "1", "policy_sha256")
    truncate(stored / "weights.pt")
    result = run("pull", "ctr/1", "--out", tmp_path / "pulled", "--tracking-uri", uri)
    assert_one_line_error(result, "weights.pt cannot be read", "re-promote it")
    assert not (tmp_path / "pulled").exists()
