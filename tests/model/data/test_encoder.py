"""The encoder: fitted on train only, stable index layout, JSON round trip, vectorized transforms."""

import numpy as np
import pandas as pd
import pytest

from deepfm_tuner.model.data.encoder import MISSING, OOV, FeatureEncoder
from deepfm_tuner.model.data.schema import FeatureSchema
from deepfm_tuner.model.errors import DataError

SCHEMA = FeatureSchema(label="y", categorical=("c",), multivalued=("t",), numeric=("n",), min_count=1)


def frame():
    return pd.DataFrame({"y": [0, 1, 0, 1, 0], "c": ["a", "b", None, "a", "a"], "t": ["x|y", "", "y", None, "x"],
                         "n": [1.0, np.nan, 3.0, 4.0, 2.0]})


def test_index_layout_missing_oov_then_vocabulary_by_frequency():
    enc = FeatureEncoder(SCHEMA).fit(frame())
    assert enc.vocabularies["c"].tokens == ["a", "b"]
    out = enc.transform(pd.DataFrame({"c": ["a", "b", None, "zzz", ""], "t": ["x"] * 5, "n": [1.0] * 5}))
    assert out.categorical[:, 0].tolist() == [2, 3, MISSING, OOV, MISSING]


def test_fit_uses_only_training_rows():
    enc = FeatureEncoder(SCHEMA).fit(frame(), rows=np.array([0, 1]))
    assert enc.vocabularies["c"].tokens == ["a", "b"]
    enc = FeatureEncoder(SCHEMA).fit(frame(), rows=np.array([0, 3]))
    assert enc.vocabularies["c"].tokens == ["a"]  # 'b' was only in a held-out row: it is OOV at transform
    assert enc.transform(frame()).categorical[1, 0] == OOV


def test_min_count_sends_rare_tokens_to_oov():
    enc = FeatureEncoder(FeatureSchema(label="y", categorical=("c",), min_count=2)).fit(frame())
    assert enc.vocabularies["c"].tokens == ["a"]


def test_multivalued_rows_are_padded_and_empty_rows_are_missing():
    enc = FeatureEncoder(SCHEMA).fit(frame())
    out = enc.transform(frame()).multivalued
    assert out.shape == (5, 2)
    vocab = enc.vocabularies["t"].tokens
    x, y = vocab.index("x") + 2, vocab.index("y") + 2
    assert out.tolist() == [[x, y], [MISSING, -1], [y, -1], [MISSING, -1], [x, -1]]


def test_numeric_is_standardized_on_train_and_keeps_missing_as_nan():
    enc = FeatureEncoder(SCHEMA).fit(frame())
    values = enc.transform(frame()).numeric[:, 0]
    assert np.isnan(values[1])
    assert np.isclose(np.nanmean(values), 0, atol=1e-6) and np.isclose(np.nanstd(values), 1, atol=1e-5)


def test_log1p_transform_for_counts():
    schema = FeatureSchema(label="y", numeric=("n",), numeric_transform="log1p")
    enc = FeatureEncoder(schema).fit(frame())
    mean, std = enc.numeric_stats["n"]
    expected = (np.log1p(3.0) - mean) / std
    assert np.isclose(enc.transform(frame()).numeric[2, 0], expected)


def test_json_round_trip_encodes_identically(tmp_path):
    enc = FeatureEncoder(SCHEMA).fit(frame())
    enc.save(tmp_path / "enc.json")
    again = FeatureEncoder.load(tmp_path / "enc.json")
    a, b = enc.transform(frame()), again.transform(frame())
    assert np.array_equal(a.categorical, b.categorical) and np.array_equal(a.multivalued, b.multivalued)
    assert np.allclose(a.numeric, b.numeric, equal_nan=True)


def test_integral_floats_and_ints_are_the_same_token():
    schema = FeatureSchema(label="y", categorical=("c",))
    enc = FeatureEncoder(schema).fit(pd.DataFrame({"c": [1, 2, 3]}))
    out = enc.transform(pd.DataFrame({"c": [1.0, np.nan, 3.0]}))
    assert out.categorical[:, 0].tolist() == [enc.vocabularies["c"].tokens.index("1") + 2, MISSING,
                                              enc.vocabularies["c"].tokens.index("3") + 2]


def test_scoring_frame_may_have_extra_columns_but_not_miss_one():
    enc = FeatureEncoder(SCHEMA).fit(frame())
    enc.transform(frame().assign(extra=1))
    with pytest.raises(DataError, match=r"request.csv: missing column\(s\) 'n'"):
        enc.transform(frame().drop(columns=["n"]), source="request.csv")


def test_non_numeric_value_in_numeric_column_names_column_and_value():
    enc = FeatureEncoder(SCHEMA)
    bad = frame().astype({"n": object})
    bad.loc[2, "n"] = "three"
    with pytest.raises(DataError, match=r"numeric column 'n' has a non-numeric value 'three' at row 2"):
        enc.fit(bad, source="f.csv")


def test_transform_before_fit_says_to_call_fit():
    with pytest.raises(RuntimeError, match="call fit"):
        FeatureEncoder(SCHEMA).transform(frame())


def test_categorical_and_dictionary_columns_encode_like_strings():
    plain = frame()
    as_categories = plain.astype({"c": "category", "t": "category"})
    enc = FeatureEncoder(SCHEMA).fit(as_categories)
    assert enc.vocabularies["c"].tokens == FeatureEncoder(SCHEMA).fit(plain).vocabularies["c"].tokens
    a, b = enc.transform(plain), enc.transform(as_categories)
    assert np.array_equal(a.categorical, b.categorical) and np.array_equal(a.multivalued, b.multivalued)


def test_integer_categories_become_the_same_tokens_as_integers():
    schema = FeatureSchema(label="y", categorical=("c",))
    enc = FeatureEncoder(schema).fit(pd.DataFrame({"c": [1, 2, 2]}))
    out = enc.transform(pd.DataFrame({"c": pd.Series([2, None, 1], dtype="category")}))
    assert out.categorical[:, 0].tolist() == [2, MISSING, 3]


def test_large_and_small_batches_look_tokens_up_alike():
    """A batch with many distinct tokens goes through Arrow's index_in, a small one through the cached pandas
    index: both must give every token (seen, unseen, empty, null) the same index."""
    tokens = [f"t{i}" for i in range(200)]
    schema = FeatureSchema(label="y", categorical=("c",))
    enc = FeatureEncoder(schema).fit(pd.DataFrame({"c": tokens + tokens[:50]}))
    batch = pd.DataFrame({"c": tokens[::-1] + ["unseen", "", None]})
    large = enc.transform(batch).categorical[:, 0]  # 203 distinct tokens for 200 in the vocabulary
    small = np.concatenate([enc.transform(batch.iloc[[i]]).categorical[:, 0] for i in range(len(batch))])
    assert np.array_equal(large, small)
    assert large[-3:].tolist() == [OOV, MISSING, MISSING] and large[-4] == 2  # 't0': seen twice, first by token


def test_a_few_rows_of_a_large_category_set_encode_like_their_strings():
    tokens = [f"t{i}" for i in range(100)]
    schema = FeatureSchema(label="y", categorical=("c",))
    enc = FeatureEncoder(schema).fit(pd.DataFrame({"c": tokens}))
    big = pd.DataFrame({"c": pd.Categorical(tokens[::-1] + [None, "unseen"])})
    for rows in ([0], [5, 99, 100], [101, 3]):
        as_strings = pd.DataFrame({"c": [big["c"].iloc[r] if r < 100 else [None, "unseen"][r - 100] for r in rows]})
        assert np.array_equal(enc.transform(big.iloc[rows]).categorical, enc.transform(as_strings).categorical)


def test_a_null_inside_an_arrow_dictionary_is_missing_on_both_lookup_paths():
    import pyarrow as pa

    from deepfm_tuner.model.data.encoder import _Vocabulary

    vocabulary = _Vocabulary([f"t{i}" for i in range(16)])
    encoded = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 0], type=pa.int32()), pa.array(["t3", None, "zz"]))
    assert vocabulary.lookup_encoded(encoded).tolist() == [5, MISSING, OOV, 5]  # 3 distinct of 16: the dict path
    vocabulary.ARROW_LOOKUP_RATIO = 100  # now Arrow's index_in
    assert vocabulary.lookup_encoded(encoded).tolist() == [5, MISSING, OOV, 5]
