"""Readers, label checks, splits and schema inference; bad data gets a one-line error naming file and column."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from deepfm_tuner.model.data.frames import check_labels, read_table, split_rows
from deepfm_tuner.model.data.schema import CRITEO_COLUMNS, FeatureSchema, infer_schema
from deepfm_tuner.model.data.source import DataSpec, SynthOptions
from deepfm_tuner.model.data.synth import SynthSpec
from deepfm_tuner.model.errors import ConfigError, DataError

OPEN_BANDIT = "data/open-bandit"


def small_frame():
    return pd.DataFrame({"click": [0, 1, 0, 1], "city": ["a", "b", None, "a"], "price": [1.5, 2.0, None, 3.0],
                         "tags": ["x|y", "y", "", None], "slot": [1, 2, 3, 1]})


@pytest.mark.parametrize("suffix", ["csv", "tsv", "parquet"])
def test_readers_round_trip_each_format(tmp_path, suffix):
    frame = small_frame()
    path = tmp_path / f"d.{suffix}"
    if suffix == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False, sep="\t" if suffix == "tsv" else ",")
    back = read_table(path)
    assert list(back.columns) == list(frame.columns)
    assert back["click"].tolist() == [0, 1, 0, 1]
    assert back["city"].isna().tolist() == [False, False, True, False]


def test_criteo_preset_reads_headerless_tsv(tiny_criteo_dir):
    frame = read_table(tiny_criteo_dir / "train.tsv", "criteo")
    assert tuple(frame.columns) == CRITEO_COLUMNS
    assert frame["I1"].dtype == np.float32 and frame["I1"].isna().any()
    assert isinstance(frame["C1"].dtype, pd.CategoricalDtype)  # hashed tokens arrive dictionary-encoded


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("click,city\n", "no data rows"),
])
def test_empty_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_table(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "missing.csv")


def test_labels_must_be_zero_or_one():
    frame = pd.DataFrame({"y": [0, 1, 2]})
    with pytest.raises(DataError, match=r"f.csv: column 'y' must hold labels 0 or 1; row 2 has 2"):
        check_labels(frame, "y", "f.csv")
    with pytest.raises(DataError, match="label column 'label' is missing"):
        check_labels(frame, "label", "f.csv")


def test_random_split_is_seeded_and_disjoint():
    a, b = split_rows(1000, seed=3), split_rows(1000, seed=3)
    assert all(np.array_equal(x, y) for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)))
    together = np.concatenate([a.train, a.val, a.test])
    assert len(np.unique(together)) == 1000 and (len(a.val), len(a.test)) == (100, 100)


def test_order_split_puts_latest_rows_last():
    order = np.arange(100)[::-1]  # row 0 is the latest
    split = split_rows(100, 0.1, 0.1, order=order)
    assert set(split.test) == set(range(10)) and set(split.val) == set(range(10, 20))


def test_inference_assigns_roles_and_honours_overrides():
    schema = infer_schema(small_frame(), "click", numeric=("slot",))
    assert schema.categorical == ("city",) and schema.multivalued == ("tags",)
    assert set(schema.numeric) == {"slot", "price"}
    assert infer_schema(small_frame(), "click").categorical == ("city", "slot")  # narrow ints are categories


def test_schema_rejects_double_roles_and_missing_columns():
    with pytest.raises(ConfigError, match="both categorical and numeric"):
        FeatureSchema(label="y", categorical=("a",), numeric=("a",))
    with pytest.raises(DataError, match=r"f.csv: missing column\(s\) 'citty' \(did you mean 'city'\?\)"):
        FeatureSchema(label="click", categorical=("citty",)).check_columns(small_frame(), "f.csv")


def test_data_spec_validates_at_the_edge():
    with pytest.raises(ConfigError, match="either 'train: PATH'"):
        DataSpec()
    with pytest.raises(ConfigError, match="did you mean 'rows'"):
        DataSpec(synthetic={"row": 10})
    with pytest.raises(ConfigError, match="did you mean 'val_fraction'"):
        DataSpec.from_dict({"train": "x.csv", "val_fractoin": 0.2})


def test_a_data_block_takes_every_synthetic_knob():
    assert list(SynthOptions.__annotations__) == [f.name for f in dataclasses.fields(SynthSpec)]


def test_real_open_bandit_csv_loads_joins_and_infers():
    clicks = read_table(f"{OPEN_BANDIT}/men.csv")
    items = read_table(f"{OPEN_BANDIT}/item_context.csv")
    assert len(clicks) == 10_000 and clicks["click"].sum() == 46
    joined = clicks.merge(items.drop(columns=[items.columns[0]]), on="item_id", how="left")
    schema = infer_schema(joined, "click", categorical=("item_id", "position"),
                          ignore=(joined.columns[0], "timestamp", "propensity_score"))
    assert {"user_feature_0", "item_feature_1"} <= set(schema.categorical)
    assert "user-item_affinity_0" in schema.numeric and "item_feature_0" in schema.numeric
