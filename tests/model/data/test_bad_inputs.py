"""Issue #18: bad input is one line naming the problem and the fix (exit 2, no traceback, nothing half-written);
several training files are one dataset; a pulled folder evaluates; the encoded dataset's warnings are repeated by
every command that maps it; killed builds leave no temp folder behind, whatever their fingerprint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from deepfm_tuner.model.data import cache
from deepfm_tuner.model.data.frames import split_rows
from deepfm_tuner.model.data.source import DataSpec
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.filelock import file_lock
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import train
from deepfm_tuner.tuner.pipeline.tune import load_data
from deepfm_tuner.tuner.spec.study import load_study

from conftest import TINY_POLICY, TINY_TRAINING
from support import assert_one_line_error, run

POLICY = yaml.safe_dump({"policy_configs": {"scoring_policy": {"embedding_dim": 4, "deep_hidden_units": [8]}},
                         "training": {"batch_size": 256, "max_epochs": 1, "device": "cpu", "threads": 1}})


def clicks(rows: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"label": rng.integers(0, 2, rows), "site": rng.choice(list("abcdef"), rows),
                         "price": rng.normal(5, 1, rows).round(3)})


def write_study(folder: Path, data: dict) -> Path:
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump({"study": {"name": "s", "n_trials": 1}, "data": {"encoded_dir": "enc", **data},
                                    "training": {"batch_size": 256, "max_epochs": 1, "device": "cpu", "threads": 1},
                                    "policy_configs": {"scoring_policy": {"embedding_dim": 4,
                                                                          "deep_hidden_units": [8]}}}))
    return path


def nothing_built(encoded_dir: Path) -> bool:
    """No dataset folder and no temp folder (lock files may stay: they are never deleted)."""
    return not encoded_dir.exists() or not [p for p in encoded_dir.iterdir() if not p.name.endswith(".lock")]


# -- 1: a corrupt Parquet file -----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["not parquet", "truncated", "corrupt pages"])
def test_a_corrupt_parquet_file_is_one_line(in_tmp, damage):
    clicks().to_parquet(in_tmp / "good.parquet")
    data = (in_tmp / "good.parquet").read_bytes()
    broken = {"not parquet": b"PAR1" + b"x" * 100,
              "truncated": data[: len(data) // 2] + data[-200:],
              "corrupt pages": data[:100] + b"\x55" * 300 + data[400:]}[damage]
    (in_tmp / "broken.parquet").write_bytes(broken)
    write_study(in_tmp, {"train": "broken.parquet"})
    assert_one_line_error(run("data", "prepare", "s.yaml"), "broken.parquet: not a readable Parquet file",
                          "write the file again")
    assert nothing_built(in_tmp / "enc")


# -- 2: data.train as a list of files ----------------------------------------------------------------------------
def test_a_list_of_training_files_is_one_dataset_read_in_order(tmp_path):
    days = [clicks(700, seed) for seed in range(3)]
    for i, day in enumerate(days):
        day.to_csv(tmp_path / f"day_{i}.csv", index=False)
    pd.concat(days).to_csv(tmp_path / "all.csv", index=False)
    listed = DataSpec.from_dict({"train": [str(tmp_path / f"day_{i}.csv") for i in range(3)],
                                 "encoded_dir": str(tmp_path / "enc")})
    whole = DataSpec.from_dict({"train": str(tmp_path / "all.csv"), "encoded_dir": str(tmp_path / "enc")})
    a, b = listed.prepare(), whole.prepare()
    assert sum(len(getattr(a, part)) for part in ("train", "val", "test")) == 2100
    mine, theirs = a.encoder.to_dict(), b.encoder.to_dict()  # the same rows in the same order: the same encoder
    assert mine["categorical"] == theirs["categorical"]
    assert mine["numeric"]["price"] == pytest.approx(theirs["numeric"]["price"], rel=1e-12)  # batches sum alike
    assert np.array_equal(np.load(a.folder / "split.npy"), np.load(b.folder / "split.npy"))
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(a, part).labels, getattr(b, part).labels)
    manifest = cache.manifest(a.folder)
    assert [Path(s["path"]).name for s in manifest["sources"]] == ["day_0.csv", "day_1.csv", "day_2.csv"]

    time.sleep(0.01)
    days[2].head(600).to_csv(tmp_path / "day_2.csv", index=False)  # the last day changes: a new fingerprint
    assert listed.prepare().fingerprint != a.fingerprint
    assert listed.to_dict()["train"] == [str(tmp_path / f"day_{i}.csv") for i in range(3)]


def test_a_yaml_list_of_files_prepares_from_the_command_line(in_tmp):
    clicks(500, 1).to_csv(in_tmp / "day_0.tsv", sep="\t", index=False)
    clicks(500, 2).to_csv(in_tmp / "day_1.tsv", sep="\t", index=False)
    (in_tmp / "s.yaml").write_text(write_study(in_tmp, {}).read_text().replace(
        "data:\n", "data:\n  train: [day_0.tsv, day_1.tsv]\n"))  # a flow list, as people write it
    result = run("data", "prepare", "s.yaml")
    assert result.exit_code == 0, result.output
    rows = re.search(r"data: ([\d,]+) train / ([\d,]+) val / ([\d,]+) test rows", result.output)
    assert sum(int(n.replace(",", "")) for n in rows.groups()) == 1000
    assert load_study("s.yaml").data.train == ("day_0.tsv", "day_1.tsv")


@pytest.mark.parametrize("second, fragments", [
    ("day_x.csv", ["day_x.csv: its columns differ from day_0.csv's (missing 'price'; extra 'cost')",
                   "must all have the same columns"]),
    ("day_p.parquet", ["day_p.parquet: a parquet file among data.train's csv files", "one format"]),
])
def test_a_training_file_that_does_not_match_the_first_is_named(in_tmp, second, fragments):
    clicks().to_csv(in_tmp / "day_0.csv", index=False)
    clicks().rename(columns={"price": "cost"}).to_csv(in_tmp / "day_x.csv", index=False)
    clicks().to_parquet(in_tmp / "day_p.parquet")
    write_study(in_tmp, {"train": ["day_0.csv", second]})
    assert_one_line_error(run("data", "prepare", "s.yaml"), *fragments)
    assert nothing_built(in_tmp / "enc")


@pytest.mark.parametrize("train, fragment", [([], "data.train must be a file path or a non-empty list of file paths"),
                                             (["a.csv", 3], "data.train must be a file path or a non-empty list")])
def test_a_bad_list_of_files_is_refused_when_read(in_tmp, train, fragment):
    write_study(in_tmp, {"train": train})
    assert_one_line_error(run("data", "prepare", "s.yaml"), fragment)


# -- 3: data.encoded_dir under a regular file --------------------------------------------------------------------
@pytest.mark.parametrize("encoded_dir, fragment", [
    ("afile/enc", "data.encoded_dir afile/enc is under afile, which is a file, not a folder"),
    ("afile", "data.encoded_dir afile is a file, not a folder"),
])
def test_an_encoded_dir_that_is_or_is_under_a_file_is_one_line(in_tmp, encoded_dir, fragment):
    clicks().to_csv(in_tmp / "c.csv", index=False)
    (in_tmp / "afile").write_text("notes\n")
    write_study(in_tmp, {"train": "c.csv", "encoded_dir": encoded_dir})
    assert_one_line_error(run("data", "prepare", "s.yaml"), fragment, "set data.encoded_dir to a folder")
    assert (in_tmp / "afile").read_text() == "notes\n"


# -- 4: labels that are not 0/1 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_yes_no_labels_name_the_label_column_and_what_labels_must_be(in_tmp, suffix):
    frame = clicks().assign(label=lambda f: np.where(f["label"] == 1, "yes", "no"))
    frame.to_parquet(in_tmp / "yn.parquet") if suffix == ".parquet" else frame.to_csv(in_tmp / "yn.csv", index=False)
    write_study(in_tmp, {"train": f"yn{suffix}"})
    result = run("data", "prepare", "s.yaml")
    assert_one_line_error(result, f"yn{suffix}: label column 'label' holds 'yes'",
                          "labels must be 0 or 1 (or true/false)")
    assert "categorical" not in result.output
    assert nothing_built(in_tmp / "enc")


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_true_false_labels_are_read_as_one_and_zero(tmp_path, suffix):
    frame = clicks().assign(label=lambda f: f["label"].astype(bool))
    path = tmp_path / f"tf{suffix}"
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
    prepared = DataSpec(train=str(path), encoded_dir=str(tmp_path / "enc")).prepare()
    labels = np.concatenate([np.asarray(getattr(prepared, part).labels) for part in ("train", "val", "test")])
    assert set(np.unique(labels)) == {0.0, 1.0} and labels.sum() == frame["label"].sum()


def test_evaluate_names_the_label_column_too(in_tmp, tiny_prepared, tiny_frame):
    policy = ScoringPolicy(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder,
                           train(tiny_prepared, TINY_POLICY, TINY_TRAINING.replace(max_epochs=1)).model, {})
    policy.save(in_tmp / "p")
    tiny_frame.head(200).assign(label=lambda f: np.where(f["label"] == 1, "yes", "no")).to_parquet(in_tmp / "t.parquet")
    assert_one_line_error(run("evaluate", "--model", "p", "--data", "t.parquet"),
                          "label column 'label' holds", "labels must be 0 or 1 (or true/false)")


# -- 6: evaluate the folder `deepfm pull --out DIR` wrote ----------------------------------------------------------
@pytest.mark.slow
def test_evaluate_takes_the_folder_pull_wrote(in_tmp, tiny_prepared, tiny_frame, tiny_criteo_dir):
    from mlflow import MlflowClient

    from deepfm_tuner.tuner.registry.promotion import promote_policy
    from deepfm_tuner.tuner.registry.pull import pull_model

    uri = f"sqlite:///{in_tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("pulled", artifact_location=(in_tmp / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.set_terminated(run_id, "FINISHED")
    policy_dir = ScoringPolicy(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder,
                               train(tiny_prepared, TINY_POLICY, TINY_TRAINING).model, {}).save(in_tmp / "policy")
    test_frame = tiny_frame.iloc[split_rows(len(tiny_frame), seed=0).test].reset_index(drop=True)
    promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=test_frame, registered_name="pulled",
                   tags={}, client=client)
    out = pull_model("models:/pulled/1", in_tmp / "champion", client=client)
    assert (out / "source.json").is_file() and (out / "policy").is_dir()

    pulled = run("evaluate", "--model", out, "--data", tiny_criteo_dir / "test.tsv", "--format", "criteo", "--json")
    direct = run("evaluate", "--model", "policy", "--data", tiny_criteo_dir / "test.tsv", "--format", "criteo",
                 "--json")
    assert pulled.exit_code == 0, pulled.output
    assert json.loads(pulled.output) == json.loads(direct.output)


def test_a_folder_that_holds_no_policy_is_still_refused(in_tmp):
    (in_tmp / "empty" / "policy").mkdir(parents=True)
    (in_tmp / "t.csv").write_text("label,a\n0,x\n1,y\n")
    assert_one_line_error(run("evaluate", "--model", "empty", "--data", "t.csv"), "not a scoring-policy directory",
                          "'deepfm pull'")


# -- 7: the encoded dataset's warnings, on every command that maps it ----------------------------------------------
WARNING = "numeric column 'price': 1 value(s) that are not numbers read as missing (e.g. 'seven' at row 7)"


@pytest.fixture()
def seven(in_tmp) -> Path:
    frame = clicks()
    frame["price"] = frame["price"].astype(str)
    frame.loc[7, "price"] = "seven"
    frame.to_csv(in_tmp / "seven.csv", index=False)
    (in_tmp / "schema.yaml").write_text("numeric: [price]\n")
    (in_tmp / "policy.yaml").write_text(POLICY)
    return write_study(in_tmp, {"train": "seven.csv", "schema": {"numeric": ["price"]}})


def test_a_warning_of_the_build_is_repeated_by_every_command_that_maps_the_dataset(seven, in_tmp):
    for attempt in ("miss", "hit"):
        result = run("data", "prepare", "s.yaml")
        assert result.exit_code == 0, result.output
        assert result.output.count(WARNING) == 1, (attempt, result.output)
    folder = Path(result.output.strip().splitlines()[-1])
    assert cache.manifest(folder)["warnings"] == [WARNING]

    messages: list[str] = []  # tune and promote map the data through load_data, once each
    load_data(load_study("s.yaml"), messages.append)
    assert messages == [WARNING]

    for attempt in ("miss", "hit"):  # train (its own encoded dataset: --data gives the schema in another file)
        result = run("train", "--policy", "policy.yaml", "--data", "seven.csv", "--schema", "schema.yaml",
                     "--out", f"p-{attempt}")
        assert result.exit_code == 0, result.output
        assert result.output.count(WARNING) == 1, (attempt, result.output)


# -- 9: a killed build's temp folder, whatever its fingerprint -----------------------------------------------------
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_build_removes_the_temp_folders_of_killed_builds_of_any_fingerprint(tmp_path):
    clicks().to_csv(tmp_path / "c.csv", index=False)
    root = tmp_path / "enc"
    root.mkdir()
    killed = root / f".0123456789abcdef.tmp-{dead_pid()}"  # a build killed before its source changed
    running = root / f".fedcba9876543210.tmp-{os.getpid()}"  # a build still running (its process is alive)
    locked = root / f".00000000000000aa.tmp-{dead_pid()}"  # a builder elsewhere that holds its lock
    for folder in (killed, running, locked):
        (folder / "train").mkdir(parents=True)
        (folder / "raw_labels.bin").write_bytes(b"\0" * 64)
    with file_lock(root / "00000000000000aa.lock"):
        prepared = DataSpec(train=str(tmp_path / "c.csv"), encoded_dir=str(root)).prepare()
    assert not killed.exists()
    assert running.is_dir() and locked.is_dir()
    assert prepared.folder.is_dir() and not list(root.glob(f".{prepared.fingerprint}.tmp-*"))


def test_a_map_removes_nothing(tmp_path):
    """Cleaning up is a build's job, under its lock: a hit touches no other folder."""
    clicks().to_csv(tmp_path / "c.csv", index=False)
    spec = DataSpec(train=str(tmp_path / "c.csv"), encoded_dir=str(tmp_path / "enc"))
    spec.prepare()
    killed = tmp_path / "enc" / f".0123456789abcdef.tmp-{dead_pid()}"
    killed.mkdir()
    assert spec.prepare().cache_hit and killed.is_dir()


def test_a_data_error_names_the_file_of_a_listed_training_file(tmp_path):
    clicks().to_csv(tmp_path / "day_0.csv", index=False)
    (tmp_path / "day_1.csv").write_text("label,site,price\n")
    spec = DataSpec(train=[str(tmp_path / "day_0.csv"), str(tmp_path / "day_1.csv")], encoded_dir=str(tmp_path / "e"))
    with pytest.raises(DataError, match=r"day_1.csv: the file has no data rows"):
        spec.prepare()
