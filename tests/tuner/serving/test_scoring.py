"""Scoring a raw frame: the same probabilities however the rows are sliced, threaded, or forked into a worker.
Scoring a file: streamed batch by batch, written as a whole-file read would have typed it."""

import os
import select
import signal

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient

import deepfm_tuner.model.policy as policy_module
from deepfm_tuner.model.data.frames import read_table
from deepfm_tuner.model.data.reader import BLOCK_BYTES, SAMPLE_BYTES
from deepfm_tuner.model.data.tensors import TensorData
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import train
from deepfm_tuner.tuner.registry.refs import using_client
from deepfm_tuner.tuner.serving.pyfunc import log_policy_model
from deepfm_tuner.tuner.serving.scoring import score_file

from conftest import TINY_POLICY, TINY_TRAINING


@pytest.fixture(scope="module")
def policy(tiny_prepared):
    result = train(tiny_prepared, TINY_POLICY, TINY_TRAINING.replace(max_epochs=1))
    return ScoringPolicy(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder, result.model)


@pytest.fixture
def two_threads():
    """Scoring uses its threads when torch has more than one (training in the fixtures set one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def reference(policy, frame) -> np.ndarray:
    """One forward pass over every row, on the calling thread."""
    data = TensorData.from_features(policy.encoder.transform(frame))
    with torch.no_grad():
        return torch.sigmoid(policy.model(data.categorical, data.multivalued, data.numeric)).numpy()


def test_slices_scored_on_threads_equal_one_pass(policy, tiny_frame, monkeypatch, two_threads):
    frame = tiny_frame.head(1000)
    monkeypatch.setattr(policy_module, "MODEL_BATCH", 96)  # 11 slices, shared by the scoring threads
    scores = policy.predict(frame, batch_size=400)  # 3 encoder chunks, the last one short
    np.testing.assert_allclose(scores, reference(policy, frame), rtol=1e-5, atol=1e-7)
    assert torch.get_num_threads() == 2  # the scoring threads' one-thread setting stays theirs


def test_one_row_at_a_time_equals_the_batch(policy, tiny_frame):
    frame = tiny_frame.head(40)
    one_by_one = np.concatenate([policy.predict(frame.iloc[[i]]) for i in range(len(frame))])
    np.testing.assert_allclose(one_by_one, policy.predict(frame), rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_scores_after_its_parent_did(policy, tiny_frame, monkeypatch, two_threads):
    """Servers fork workers after loading the model; the parent's scoring threads do not exist in the child."""
    frame = tiny_frame.head(500)
    monkeypatch.setattr(policy_module, "MODEL_BATCH", 64)
    expected = policy.predict(frame)  # the parent's scoring pool now exists
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: score, send the bytes, leave without running pytest's teardown
        try:
            os.write(write, policy.predict(frame).tobytes())
        finally:
            os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], 60)
    if not ready:  # a child waiting on its parent's (absent) threads hangs: fail instead
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert ready, "the forked child did not score within 60 s"
    with os.fdopen(read, "rb") as pipe:
        child = np.frombuffer(pipe.read(), dtype=np.float32)
    np.testing.assert_array_equal(child, expected)


def test_warm_up_scores_a_row_of_missing_values_for_every_field_kind():
    """`load_context` warms the policy up, so a server's first request does not build the lookups."""
    import pandas as pd

    from deepfm_tuner.model.config import PolicyConfig, TrainConfig
    from deepfm_tuner.model.data.encoder import FeatureEncoder
    from deepfm_tuner.model.data.schema import FeatureSchema

    schema = FeatureSchema(label="y", categorical=("c",), multivalued=("t",), numeric=("n",), min_count=1)
    frame = pd.DataFrame({"y": [0, 1, 0], "c": ["a", "b", "a"], "t": ["x|y", "y", ""], "n": [1.0, None, 3.0]})
    policy = ScoringPolicy.build(PolicyConfig(embedding_dim=4, deep_hidden_units=(8,), dropout=0.0),
                                 TrainConfig(device="cpu"), FeatureEncoder(schema).fit(frame))
    policy.warm_up()
    assert all(vocabulary._index is not None for vocabulary in policy.encoder.vocabularies.values())
    missing = policy.predict(pd.DataFrame({"c": [None], "t": [None], "n": [None]}))
    assert missing.shape == (1,) and np.isfinite(missing).all()


# -- files ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pyfunc_model(policy, tiny_frame, tmp_path_factory):
    """The policy logged as the pyfunc model, then loaded from its downloaded files: no registry involved."""
    root = tmp_path_factory.mktemp("logged")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("scoring", artifact_location=str(root / "artifacts"))
    with using_client(client), mlflow.start_run(experiment_id=experiment):
        info = log_policy_model(policy.save(root / "policy"), input_example=tiny_frame.head(5))
        local = mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(root / "model"))
    return mlflow.pyfunc.load_model(local)


def whole_read(path, fmt=None) -> pa.Table:
    """What scoring wrote before it streamed: the whole file read into pandas, then each column back to Arrow."""
    return pa.Table.from_pandas(read_table(path, fmt), preserve_index=False)


def test_a_csv_whose_types_change_past_the_first_block_is_written_as_a_whole_read_types_it(
        pyfunc_model, policy, tiny_frame, tmp_path):
    rows = pd.concat([tiny_frame] * 30, ignore_index=True)
    rows.insert(0, "request_id", np.arange(len(rows)))
    rows["price"] = ["1"] * (len(rows) - 1) + ["1.5"]  # integers for 16 MiB, then a fraction: a double column
    rows["note"] = [None] * (len(rows) - 1) + ["late"]  # empty for 16 MiB, then text: a string column
    path = tmp_path / "rows.csv"
    rows.to_csv(path, index=False)
    assert path.stat().st_size > SAMPLE_BYTES  # the changes come after the block the types are sampled from
    seen = []
    result = score_file(pyfunc_model, path, tmp_path / "scores.parquet", batch_size=40_000,
                        progress=lambda done, total: seen.append((done, total)))
    expected, written = whole_read(path), pq.read_table(result.output)
    assert written.column_names == expected.column_names + ["probability"] and result.rows == len(rows)
    assert written.schema.types == expected.schema.types + [pa.float64()]
    assert (written.schema.field("price").type, written.schema.field("note").type) == (pa.float64(), pa.string())
    assert written.drop_columns(["probability"]).equals(expected)
    np.testing.assert_allclose(written["probability"].to_numpy(), policy.predict(read_table(path)), rtol=1e-5,
                               atol=1e-7)
    assert seen == [(40_000, None), (80_000, None), (len(rows), len(rows))]  # one pass counted: the last one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv", "scores.parquet"]


def test_a_parquet_file_is_read_with_its_pandas_types_and_its_row_count(pyfunc_model, policy, tiny_frame,
                                                                        tmp_path):
    rows = tiny_frame.head(1000).copy()
    rows["request_id"] = pd.array([None] + list(range(1, 1000)), dtype="Int64")
    rows.index = [f"r{i}" for i in range(len(rows))]  # stored as a column, read back as the index
    path = tmp_path / "rows.parquet"
    rows.to_parquet(path)
    seen = []
    result = score_file(pyfunc_model, path, tmp_path / "scores.parquet", batch_size=300,
                        progress=lambda done, total: seen.append((done, total)))
    expected, written = whole_read(path), pq.read_table(result.output)
    assert written.column_names == expected.column_names + ["probability"]
    assert "__index_level_0__" not in written.column_names and written.schema.field("request_id").type == pa.int64()
    assert written.drop_columns(["probability"]).equals(expected)
    np.testing.assert_allclose(written["probability"].to_numpy(), policy.predict(rows), rtol=1e-5, atol=1e-7)
    assert seen == [(300, 1000), (600, 1000), (900, 1000), (1000, 1000)]


def test_a_bad_value_after_the_first_batches_leaves_no_output(pyfunc_model, tiny_criteo_dir, tmp_path):
    text = (tiny_criteo_dir / "test.tsv").read_text()
    fields = text.splitlines()[0].split("\t")
    fields[1] = "lots"  # I1 is a count
    path = tmp_path / "rows.tsv"
    path.write_text(text * (BLOCK_BYTES // len(text) + 2) + "\t".join(fields) + "\n")
    with pytest.raises(DataError, match="invalid value 'lots'"):
        score_file(pyfunc_model, path, tmp_path / "scores.tsv", fmt="criteo", batch_size=1000)
    assert [p.name for p in tmp_path.iterdir()] == ["rows.tsv"]  # neither scores.tsv nor its partial file
