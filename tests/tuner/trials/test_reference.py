"""The tree-model reference (`study.reference: lightgbm`): trained once on the trials' own train / validation rows
as a nested run, scored on the champion's test rows, compared with the registered version by DeLong (tags on the
version and the parent run, one line of advice when the tree model wins), never trained twice."""

from __future__ import annotations

import contextlib
import dataclasses
import sys

import numpy as np
import pandas as pd
import pytest

from deepfm_tuner.model.data.frames import split_rows
from deepfm_tuner.model.data.schema import FeatureSchema
from deepfm_tuner.model.data.tensors import prepare
from deepfm_tuner.model.errors import ConfigError
from deepfm_tuner.tuner.pipeline.promotion import reference_line
from deepfm_tuner.tuner.pipeline.tune import tune
from deepfm_tuner.tuner.registry.gate import AucComparison
from deepfm_tuner.tuner.spec.study import ReferenceSpec, load_study
from deepfm_tuner.tuner.trials.reference import (
    DEFAULTS,
    feature_matrix,
    feature_names,
    lightgbm_params,
    run_reference,
    train_lightgbm,
)

from support import assert_one_line_error, run, write_study

pytest.importorskip("lightgbm")  # scripts/setup.sh installs it (the `reference` extra)


def signal_frame(rows: int = 6000, seed: int = 0) -> pd.DataFrame:
    """Clicks driven by one number (trees find it at once), beside a categorical, a list field and noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    tags = np.array(["a|b", "b", "", "c|a|d", "d|d"])[rng.integers(0, 5, rows)]
    return pd.DataFrame({"label": (rng.random(rows) < 1 / (1 + np.exp(-3 * x))).astype(int), "x": x,
                         "noise": rng.normal(size=rows), "c": rng.choice(list("abcdef"), rows), "tags": tags})


SCHEMA = FeatureSchema(label="label", categorical=("c",), multivalued=("tags",), numeric=("x", "noise"))


# -- the features and settings -----------------------------------------------------------------------------------
def test_each_field_is_one_column_and_a_list_field_its_first_token_and_length():
    frame = signal_frame(200)
    prepared = prepare(frame, SCHEMA, split_rows(len(frame), seed=0))
    encoder = prepared.encoder
    assert feature_names(encoder) == ["c", "tags.first", "tags.tokens", "x", "noise"]
    encoded = encoder.transform(frame)
    matrix = feature_matrix(encoder, encoded)
    assert matrix.shape == (200, 5) and matrix.dtype == np.float32
    assert np.array_equal(matrix[:, 0], encoded.categorical[:, 0])
    assert np.array_equal(matrix[:, 1], encoded.multivalued[:, 0])  # the first token's code
    counts = frame["tags"].map(lambda s: len([t for t in s.split("|") if t]))
    assert np.array_equal(matrix[:, 2], counts.to_numpy())  # "" holds no token, "d|d" two
    assert np.array_equal(matrix[:, 3:], encoded.numeric)


def split_kinds(booster) -> set[tuple[str, str]]:
    """(feature, decision type) of every split: '<=' a numeric threshold, '==' a LightGBM categorical split."""
    names, kinds = booster.feature_name(), set()

    def walk(node):
        if "split_feature" in node:
            kinds.add((names[node["split_feature"]], node["decision_type"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return kinds


def test_codes_are_numbers_unless_the_study_names_lightgbm_categoricals():
    frame = signal_frame(3000).assign(label=lambda f: ((f["x"] > 0) ^ (f["c"] == "c")).astype(int))
    prepared = prepare(frame, SCHEMA, split_rows(len(frame), seed=0))
    booster, _ = train_lightgbm(prepared, lightgbm_params(ReferenceSpec(), 0, 1))
    assert ("c", "<=") in split_kinds(booster) and all(kind == "<=" for _, kind in split_kinds(booster))
    chosen = ReferenceSpec("lightgbm", {"cat_feature": "c,tags.first"})  # an alias of categorical_feature
    assert ("c", "==") in split_kinds(train_lightgbm(prepared, lightgbm_params(chosen, 0, 1))[0])
    with pytest.raises(ConfigError, match=r"categorical_feature: no feature column 'tag.first' \(did you mean "
                                          r"'tags.first'\?\); the columns are c, tags.first, tags.tokens, x, noise"):
        train_lightgbm(prepared, lightgbm_params(ReferenceSpec("lightgbm", {"categorical_feature": "tag.first"}), 0, 1))


def test_defaults_then_the_studys_params_under_lightgbms_own_names():
    params = lightgbm_params(ReferenceSpec("lightgbm", {"n_estimators": 200, "eta": 0.1, "max_bin": 63}), 7, 2)
    assert params == {**DEFAULTS, "num_iterations": 200, "learning_rate": 0.1, "max_bin": 63, "seed": 7,
                      "num_threads": 2}
    assert (DEFAULTS["num_leaves"], DEFAULTS["learning_rate"], DEFAULTS["num_iterations"]) == (63, 0.05, 1000)


def test_a_parameter_lightgbm_does_not_know_fails_the_study_before_any_trial(in_tmp, study_file):
    path = study_file(study__reference={"type": "lightgbm", "params": {"num_leafs": 7}})
    with pytest.raises(ConfigError) as info:
        lightgbm_params(load_study(path).reference, 0, None)
    assert "unknown LightGBM parameter 'num_leafs' (did you mean 'num_leaves'?)" in str(info.value)
    assert_one_line_error(run("tune", path), "study.reference.params: unknown LightGBM parameter 'num_leafs'")
    assert not (in_tmp / "mlruns").exists()  # nothing was created


def test_without_lightgbm_installed_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # `import lightgbm` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'deepfm-tuner\[reference\]'"):
        lightgbm_params(ReferenceSpec(), 0, None)


def test_the_line_says_which_model_won_and_advises_when_the_tree_does():
    worse = AucComparison(0.70, 0.75, -0.05, -0.07, -0.03, 1e-6, -5.0, 2400)
    line = reference_line(worse, "LightGBM", 3, 0.05)
    assert line.startswith("the LightGBM reference is significantly better than version 3 (test AUC 0.7000 vs "
                           "0.7500 on the same 2,400 rows") and "prefer the tree model" in line
    better = AucComparison(0.75, 0.70, 0.05, 0.03, 0.07, 1e-6, 5.0, 2400)
    assert reference_line(better, "LightGBM", 3, 0.05).startswith("DeepFM earned its keep: version 3 beats")
    tie = AucComparison(0.70, 0.70, 0.0, -0.02, 0.02, 0.9, 0.1, 2400)
    assert reference_line(tie, "LightGBM", 3, 0.05).startswith("no significant difference from the LightGBM")


# -- end to end: a DeepFM that learned nothing against a tree model that did ------------------------------------
@pytest.fixture(scope="module")
def referenced(tmp_path_factory):
    """One 1-trial study whose DeepFM trains at learning rate 1e-5 for one epoch (it learns almost nothing), with
    `reference: {type: lightgbm, params: {num_leaves: 15, n_estimators: 200}}`, promoted."""
    folder = tmp_path_factory.mktemp("reference")
    with contextlib.chdir(folder):  # the study's relative stores (mlruns/) land in its folder
        signal_frame().to_csv(folder / "clicks.csv", index=False)
        path = write_study(folder, {
            "study": {"name": "ref", "n_trials": 1, "registered_model": "ref-m",
                      "reference": {"type": "lightgbm", "params": {"num_leaves": 15, "n_estimators": 200}}},
            "data": {"train": "clicks.csv", "test_fraction": 0.4, "schema": {"multivalued": ["tags"]}},
            "training": {"batch_size": 256, "max_epochs": 1, "seed": 0, "device": "cpu", "threads": 1},
            "policy_configs": {"scoring_policy": {"embedding_dim": 4, "deep_hidden_units": [8],
                                                  "learning_rate": {"choices": [1.0e-5]}}}})
        yield folder, path, tune(load_study(path))


@pytest.fixture()
def in_referenced(referenced, monkeypatch):
    monkeypatch.chdir(referenced[0])
    return referenced


def reference_runs(handle, status: str | None = None):
    return handle.tracker.child_runs(handle.parent_run_id, "reference", status=status)


@pytest.mark.slow
def test_the_reference_is_a_nested_run_trained_on_the_trials_split(in_referenced):
    _, _, result = in_referenced
    handle = result.handle
    [ref] = reference_runs(handle, "FINISHED")
    assert ref.data.tags["deepfm.trial_state"] == "COMPLETE"
    assert ref.data.tags["deepfm.role"] == "reference" and ref.data.tags["mlflow.parentRunId"] == handle.parent_run_id
    assert ref.data.params["num_leaves"] == "15" and ref.data.params["num_iterations"] == "200"  # an alias, mapped
    trial_run = handle.tracker.client.get_run(handle.study.trials[0].user_attrs["mlflow_run_id"])
    assert ref.data.tags["deepfm.data_fingerprint"] == trial_run.data.tags["deepfm.data_fingerprint"]
    digests = [sorted(i.dataset.digest for i in run.inputs.dataset_inputs) for run in (ref, trial_run)]
    assert len(digests[0]) == 3 and digests[0] == digests[1]  # the same train, validation and test parts
    metrics = ref.data.metrics
    assert metrics["val_auc"] == metrics["score_val_auc"] > 0.75 and metrics["test_auc"] > 0.75
    assert 1 <= metrics["best_iteration"] <= 200 and metrics["train_seconds"] > 0
    files = {a.path for a in handle.tracker.client.list_artifacts(ref.info.run_id, "reference")}
    assert files == {"reference/model.txt", "reference/encoder.json", "reference/reference.json"}
    assert result.reference.run_id == ref.info.run_id and result.reference.trained
    parent = handle.tracker.client.get_run(handle.parent_run_id)
    assert parent.data.tags["deepfm.reference_run_id"] == ref.info.run_id
    assert parent.data.metrics["reference_test_auc"] == pytest.approx(metrics["test_auc"])


@pytest.mark.slow
def test_the_version_is_compared_with_the_reference_on_the_same_test_rows(in_referenced):
    _, _, result = in_referenced
    handle, promotion = result.handle, result.promotion
    [ref] = reference_runs(handle, "FINISHED")
    tags = handle.tracker.client.get_model_version("ref-m", str(promotion.version)).tags
    assert tags["reference.type"] == "lightgbm"
    assert float(tags["reference.test_auc"]) == pytest.approx(ref.data.metrics["test_auc"], abs=1e-6)
    diff = float(tags["reference.auc_diff"])
    assert diff == pytest.approx(promotion.test_auc - ref.data.metrics["test_auc"], abs=1e-5)
    assert float(tags["reference.ci_low"]) < diff < float(tags["reference.ci_high"]) < 0
    assert float(tags["reference.p_value"]) < 0.05
    parent = handle.tracker.client.get_run(handle.parent_run_id)
    assert {k: v for k, v in parent.data.tags.items() if k.startswith("reference.") and k != "reference.version"} \
        == {k: v for k, v in tags.items() if k.startswith("reference.")}
    assert parent.data.tags["reference.version"] == str(promotion.version)
    assert promotion.reference["auc_diff"] == pytest.approx(diff, abs=1e-6)
    message = promotion.reference_message
    assert message.startswith(f"the LightGBM reference is significantly better than version {promotion.version}")
    assert "prefer the tree model" in message


@pytest.mark.slow
def test_a_resume_reuses_the_reference_and_promote_prints_the_comparison(in_referenced):
    _, path, result = in_referenced
    again = tune(load_study(path).with_overrides(promote=False))
    assert again.reference is not None and not again.reference.trained
    assert again.reference.run_id == result.reference.run_id and len(reference_runs(again.handle, "FINISHED")) == 1
    shown = run("promote", path)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert any(line.startswith("reference: LightGBM val AUC") and "recorded earlier" in line for line in lines)
    assert any(line.startswith("the LightGBM reference is significantly better than version") for line in lines)
    assert len(reference_runs(again.handle, "FINISHED")) == 1


@pytest.mark.slow
def test_a_failed_reference_is_closed_with_its_reason_and_the_study_goes_on(in_referenced):
    _, _, result = in_referenced
    spec = result.handle.spec.with_overrides(reference=ReferenceSpec("lightgbm", {"num_leaves": 1}))
    handle = dataclasses.replace(result.handle, spec=spec)
    logged = []
    assert run_reference(handle, spec.data.prepare(), log=logged.append) is None
    failed = [r for r in reference_runs(handle) if r.info.status == "FAILED"]
    assert len(failed) == 1 and "num_leaves" in failed[0].data.tags["deepfm.failure_reason"]
    assert failed[0].data.tags["deepfm.trial_state"] == "FAIL"
    assert any(line.startswith("reference: failed (") for line in logged)
    assert handle.study.user_attrs["reference"]["run_id"] == result.reference.run_id  # the earlier one stands
