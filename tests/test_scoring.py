"""Scoring a raw frame: the same probabilities however the rows are sliced, threaded, or forked into a worker."""

import os
import select
import signal

import numpy as np
import pytest
import torch

import deepfm_tuner.model.policy as policy_module
from deepfm_tuner.model.data.tensors import TensorData
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import train
from tests.conftest import TINY_POLICY, TINY_TRAINING


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
