"""The data a run used, described as MLflow dataset inputs: named after its files, the fingerprint as digest, the
files as source, the row counts as profile; described from the manifest, never from the data."""

from __future__ import annotations

import json
from pathlib import Path

from deepfm_tuner.model.data.source import DataSpec
from deepfm_tuner.tuner.stores.datasets import part_dataset, run_datasets


def by_context(inputs) -> dict:
    return {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}


def test_each_part_is_named_after_its_files_with_the_fingerprint_as_digest(tmp_path, tiny_frame):
    tiny_frame.iloc[:1000].to_csv(tmp_path / "day_0.csv", index=False)
    tiny_frame.iloc[1000:2000].to_csv(tmp_path / "day_1.csv", index=False)
    tiny_frame.iloc[2000:2500].to_csv(tmp_path / "tuesday.csv", index=False)
    tiny_frame.iloc[2500:].to_csv(tmp_path / "holdout.csv", index=False)
    prepared = DataSpec.from_dict({"train": [str(tmp_path / "day_0.csv"), str(tmp_path / "day_1.csv")],
                                   "valid": str(tmp_path / "tuesday.csv"), "test": str(tmp_path / "holdout.csv"),
                                   "encoded_dir": str(tmp_path / "enc")}).prepare()

    datasets = by_context(run_datasets(prepared))

    assert list(datasets) == ["training", "validation", "test"]
    assert {c: d.name for c, d in datasets.items()} == {
        "training": "day_0+day_1:train", "validation": "tuesday:val", "test": "holdout:test"}
    assert {d.digest for d in datasets.values()} == {prepared.fingerprint}
    assert {c: json.loads(d.profile)["rows"] for c, d in datasets.items()} == {
        "training": 2000, "validation": 500, "test": 500}
    assert 0 < json.loads(datasets["training"].profile)["clicks"] < 2000
    train_source = json.loads(datasets["training"].source)
    assert [Path(f).name for f in train_source["files"]] == ["day_0.csv", "day_1.csv"]
    assert train_source["uri"] == str(tmp_path.resolve()) and train_source["encoded"] == str(prepared.folder)
    assert json.loads(datasets["test"].source)["uri"] == str((tmp_path / "holdout.csv").resolve())
    columns = json.loads(datasets["test"].schema)["mlflow_colspec"]
    assert columns[0] == {"name": "label", "type": "long"} and len(columns) == 1 + 13 + 26
    assert part_dataset(prepared, "test") == datasets["test"]


def test_files_named_after_their_part_take_their_folder_and_split_parts_share_them(tmp_path):
    prepared = DataSpec.from_dict({"synthetic": {"rows": 500, "seed": 1, "max_cardinality": 50}, "synthetic_dir": str(tmp_path / "gen"),
                                   "encoded_dir": str(tmp_path / "enc")}).prepare()

    names = {c: d.name for c, d in by_context(run_datasets(prepared)).items()}

    folder = "synth-500-seed1-card50"
    assert names == {"training": f"{folder}/train:train", "validation": f"{folder}/train:val",
                     "test": f"{folder}/test:test"}


def test_data_prepared_in_memory_is_described_by_its_fingerprint_and_rows(tiny_prepared):
    datasets = by_context(run_datasets(tiny_prepared))

    assert {d.name for d in datasets.values()} == {"data:train", "data:val", "data:test"}
    assert {d.digest for d in datasets.values()} == {tiny_prepared.fingerprint}
    assert json.loads(datasets["test"].profile) == {"rows": len(tiny_prepared.parts["test"])}
    assert datasets["test"].schema is None
