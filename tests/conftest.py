"""Shared fixtures: tiny deterministic data, a study file in the test's folder, isolated MLflow/Optuna stores."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import pandas as pd
import psutil
import pytest

from deepfm_tuner.tuner.cli.logs import quiet_defaults, quiet_optuna  # noqa: E402

quiet_defaults()  # the test session is an entry point, as `deepfm` is: it sets what the libraries may print
quiet_optuna()

from deepfm_tuner.model.config import PolicyConfig, TrainConfig  # noqa: E402
from deepfm_tuner.model.data.frames import split_rows  # noqa: E402
from deepfm_tuner.model.data.schema import criteo_schema  # noqa: E402
from deepfm_tuner.model.data.synth import SynthSpec, generate, write_dataset  # noqa: E402
from deepfm_tuner.model.data.tensors import prepare  # noqa: E402

from support import write_study  # noqa: E402

TINY_POLICY = PolicyConfig(embedding_dim=4, deep_hidden_units=(16, 8), dropout=0.0, learning_rate=0.01)
TINY_TRAINING = TrainConfig(batch_size=256, max_epochs=3, patience=2, seed=0, device="cpu", threads=1)


@pytest.fixture(scope="session")
def tiny_frame() -> pd.DataFrame:
    """3,000 Criteo-format rows (label, I1..I13, C1..C26) with a known click probability."""
    frame, _ = generate(SynthSpec(rows=3000, seed=1, max_cardinality=200))
    return frame


@pytest.fixture(scope="session")
def tiny_prepared(tiny_frame):
    return prepare(tiny_frame, criteo_schema(), split_rows(len(tiny_frame), seed=0))


@pytest.fixture(scope="module")
def test_frame(tiny_frame) -> pd.DataFrame:
    """The tiny data's test rows, raw: what promotion scores through the registered model."""
    return tiny_frame.iloc[split_rows(len(tiny_frame), seed=0).test].reset_index(drop=True)


@pytest.fixture(scope="module")
def good_dir(tiny_prepared, tmp_path_factory) -> Path:
    """A trained tiny policy saved as a policy directory (what a checkpoint holds)."""
    from deepfm_tuner.model.policy import ScoringPolicy  # torch: only the tests that train load it
    from deepfm_tuner.model.train import train

    result = train(tiny_prepared, TINY_POLICY, TINY_TRAINING)
    return ScoringPolicy(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder, result.model, {}).save(
        tmp_path_factory.mktemp("good") / "policy")


@pytest.fixture(scope="session")
def tiny_criteo_dir(tmp_path_factory) -> Path:
    """train.tsv / test.tsv / truth.json for 3,000 synthetic rows in Criteo's headerless TSV format."""
    out = tmp_path_factory.mktemp("criteo")
    write_dataset(SynthSpec(rows=3000, seed=1, max_cardinality=200), out)
    return out


@pytest.fixture()
def study_file(tmp_path):
    """support.write_study aimed at the test's own folder: study_file(document=TINY_STUDY, filename=None,
    **changes) -> Path. Module-scoped fixtures, which outlive a test's folder, call write_study itself."""
    return functools.partial(write_study, tmp_path)


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in an empty directory so the embedded stores (mlruns/) land in tmp."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def workers_killed_at_exit():
    """tune(workers=N) stops its worker processes (each in its own session) on Ctrl-C; when a failure or a
    pytest-timeout ends the test instead, this kills the ones left running."""
    yield
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "deepfm_tuner.tuner.cli" in child.cmdline():
                child.kill()
