"""The pyfunc scoring model: rebuilt from artifacts, scores raw frames, identical to the in-memory policy."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow  # noqa: E402  (after tuner.cli: quiet defaults)
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient  # noqa: E402
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from deepfm_tuner.model.data.frames import read_table, split_rows
from deepfm_tuner.model.data.schema import CRITEO_CATEGORICAL, CRITEO_NUMERIC
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import train
from deepfm_tuner.tuner.cli import main
from deepfm_tuner.tuner.serving.pyfunc import (
    OUTPUT_COLUMN,
    MissingColumns,
    ScoringPolicyModel,
    conform,
    log_policy_model,
    policy_signature,
)

from conftest import TINY_POLICY, TINY_TRAINING

NAME = "ctr_pyfunc"


@pytest.fixture(scope="module")
def policy_dir(tiny_prepared, tmp_path_factory):
    result = train(tiny_prepared, TINY_POLICY, TINY_TRAINING)
    out = tmp_path_factory.mktemp("policy") / "policy"
    return ScoringPolicy(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder, result.model, {}).save(out)


@pytest.fixture(scope="module")
def test_frame(tiny_frame) -> pd.DataFrame:
    return tiny_frame.iloc[split_rows(len(tiny_frame), seed=0).test].reset_index(drop=True)


@pytest.fixture(scope="module")
def registered(policy_dir, test_frame, tmp_path_factory):
    """The tiny policy logged to a run and registered as NAME@champion in a fresh SQLite store."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        experiment = mlflow.create_experiment("pyfunc", artifact_location=str(root / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            info = log_policy_model(policy_dir, input_example=test_frame)
        version = mlflow.register_model(info.model_uri, NAME).version
        MlflowClient().set_registered_model_alias(NAME, "champion", version)
        yield uri, info
    finally:
        mlflow.set_tracking_uri(previous)
        mlflow.set_registry_uri(None)
        os.environ.pop("MLFLOW_REGISTRY_URI", None)


def test_pyfunc_scores_in_a_fresh_process_equal_in_memory_policy(registered, policy_dir, test_frame, tmp_path):
    uri, _ = registered
    path = tmp_path / "rows.parquet"
    test_frame.to_parquet(path)
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "from deepfm_tuner.tuner.serving.pyfunc import conform\n"
        f"m = mlflow.pyfunc.load_model('models:/{NAME}@champion')\n"
        f"frame = conform(pd.read_parquet(sys.argv[1]), m.metadata.get_input_schema())\n"
        "print(json.dumps(m.predict(frame).tolist()))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    expected = ScoringPolicy.load(policy_dir).predict(test_frame)
    np.testing.assert_allclose(fresh, expected, rtol=1e-6, atol=1e-7)


def test_unseen_categories_nan_numerics_and_extra_columns_score(registered, test_frame):
    model = mlflow.pyfunc.load_model(registered[1].model_uri)
    rows = conform(test_frame.head(4), model.metadata.get_input_schema())
    rows["C1"] = ["never-seen", None, "also-new", ""]
    rows["I1"] = [np.nan, 1.0, np.nan, 1e12]
    rows["I2"] = np.nan
    rows["request_id"] = ["a", "b", "c", "d"]
    scores = model.predict(rows)
    assert scores.name == OUTPUT_COLUMN and len(scores) == 4
    assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()


def test_raw_frames_with_nullable_ints_and_arrow_strings_conform_to_the_signature(registered, policy_dir,
                                                                                  tiny_criteo_dir):
    raw = read_table(tiny_criteo_dir / "test.tsv", "criteo")  # float64 counts, Arrow strings, a label column
    raw["I3"] = raw["I3"].astype("Int64")
    model = mlflow.pyfunc.load_model(registered[1].model_uri)
    scores = model.predict(conform(raw, model.metadata.get_input_schema()))
    np.testing.assert_allclose(scores.to_numpy(), ScoringPolicy.load(policy_dir).predict(raw), rtol=1e-6, atol=1e-7)


def test_missing_column_is_a_short_error_naming_it_first(registered, policy_dir, test_frame):
    rows = test_frame.drop(columns=["C7", "I2"]).head(3)
    model = ScoringPolicyModel()
    model.policy = ScoringPolicy.load(policy_dir)
    with pytest.raises(MissingColumns, match="^missing input column"):
        model.predict(None, rows)
    loaded = mlflow.pyfunc.load_model(registered[1].model_uri)
    with pytest.raises(mlflow.exceptions.MlflowException) as raised:
        loaded.predict(conform(rows, loaded.metadata.get_input_schema()))
    message = raised.value.message
    assert message.startswith("missing input column(s) C7, I2;") and len(message) < 200, message
    assert raised.value.get_http_status_code() == 400


def test_signature_types_every_feature_string_or_double(registered, tiny_prepared):
    signature = policy_signature(tiny_prepared.encoder.schema)
    inputs = {c.name: (c.type.name, c.required) for c in signature.inputs.inputs}
    # optional for MLflow (a missing one is refused by predict, briefly); needed all the same
    assert inputs == {**{c: ("string", False) for c in CRITEO_CATEGORICAL}, **{c: ("double", False) for c in CRITEO_NUMERIC}}
    logged = mlflow.models.get_model_info(registered[1].model_uri)
    assert logged.signature == signature
    assert [c.name for c in logged.signature.outputs.inputs] == [OUTPUT_COLUMN]


def test_model_package_travels_with_the_logged_model(registered, tmp_path):
    local = mlflow.artifacts.download_artifacts(artifact_uri=registered[1].model_uri, dst_path=str(tmp_path))
    code = Path(local) / "code"
    assert os.listdir(code) == ["deepfm_tuner"]
    assert sorted(p.name for p in (code / "deepfm_tuner").iterdir()) == ["model", "tuner"]
    assert sorted(p.name for p in (code / "deepfm_tuner" / "tuner").iterdir()) == ["__init__.py", "serving"]
    # serving code only: nothing that imports Optuna, click or the study pipeline travels with the model
    for source in code.rglob("*.py"):
        text = source.read_text()
        for banned in ("import optuna", "from optuna", "import click", "from click", "tuner.pipeline",
                       "tuner.trials", "tuner.cli"):
            assert banned not in text, f"{source.relative_to(code)} mentions {banned!r}"
    requirements = open(os.path.join(local, "requirements.txt")).read()
    assert "torch" in requirements and "deepfm" not in requirements


# -- a pulled model in a fresh virtual environment -----------------------------------------------------------
FRESH_SCRIPT = """
import importlib, importlib.util, json, sys
from pathlib import Path

pulled, rows, out = map(Path, sys.argv[1:4])
before = importlib.util.find_spec("deepfm_tuner") is not None
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(str(pulled / "model"))
import deepfm_tuner
from deepfm_tuner.tuner.serving.pyfunc import conform
from deepfm_tuner.tuner.serving.scoring import score_file
direct = model.predict(conform(pd.read_parquet(rows), model.metadata.get_input_schema())).tolist()
result = score_file(model, rows, out)
loaded = sorted(name for name in sys.modules if name.startswith("deepfm_tuner"))
unimportable = []
for name in ("optuna", "deepfm_tuner.tuner.pipeline", "deepfm_tuner.tuner.cli", "deepfm_tuner.tuner.registry"):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        unimportable.append(name)
print(json.dumps({"importable_before_load": before, "package": list(deepfm_tuner.__path__), "direct": direct,
                  "rows": result.rows, "loaded": loaded, "unimportable": unimportable}))
"""


def serving_environment(folder: Path, requirements: list[str]) -> Path:
    """A fresh venv (no pip, no system site-packages) whose site-packages holds links to exactly the installed
    distributions `requirements` need, transitively, and nothing else: not this project, not Optuna. Its python,
    run isolated (-I), cannot see the project's environment."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=60)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    installed: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions():  # sys.path order: the first of a name is the one imported
        installed.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    needed, todo = set(), [canonicalize_name(Requirement(line).name) for line in requirements]
    while todo:
        name = todo.pop()
        if name in needed or name not in installed:
            continue
        needed.add(name)
        for line in installed[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    assert "optuna" not in needed and "deepfm-tuner" not in needed
    for name in needed:
        dist = installed[name]
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            source, link = Path(dist.locate_file(top)), site / top
            if source.exists() and not link.exists():
                link.symlink_to(source)
    return python


@pytest.mark.slow
def test_a_pulled_model_scores_in_a_fresh_venv_with_only_the_serving_dependencies(registered, policy_dir,
                                                                                test_frame, tmp_path):
    uri, _ = registered
    pulled = CliRunner().invoke(main, ["pull", f"{NAME}@champion", "--out", str(tmp_path / "pulled"),
                                       "--tracking-uri", uri])
    assert pulled.exit_code == 0, pulled.output
    rows = tmp_path / "rows.parquet"
    test_frame.to_parquet(rows)
    # what `mlflow models serve` would install: the serving libraries, nothing of the tuning tools
    requirements = [line for line in (tmp_path / "pulled" / "model" / "requirements.txt").read_text().splitlines()
                    if line.strip()]
    assert {canonicalize_name(Requirement(line).name) for line in requirements} == {
        "torch", "numpy", "pandas", "pyarrow", "mlflow", "scikit-learn", "pyyaml", "psutil", "pydantic"}
    python = serving_environment(tmp_path / "venv", requirements)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([str(python), "-I", "-c", FRESH_SCRIPT, str(tmp_path / "pulled"), str(rows),
                           str(tmp_path / "scores.parquet")], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    code = (tmp_path / "pulled" / "model" / "code").resolve()
    assert not report["importable_before_load"]  # the model's code folder is what makes deepfm_tuner importable
    assert [Path(p).resolve() for p in report["package"]] == [code / "deepfm_tuner"]
    assert report["unimportable"] == ["optuna", "deepfm_tuner.tuner.pipeline", "deepfm_tuner.tuner.cli",
                                      "deepfm_tuner.tuner.registry"]
    # click is there (MLflow imports it itself); nothing of ours beyond the model package and serving was loaded
    ours = [name for name in report["loaded"] if name not in ("deepfm_tuner", "deepfm_tuner.tuner")]
    assert all(name.startswith(("deepfm_tuner.model", "deepfm_tuner.tuner.serving")) for name in ours), ours
    assert "deepfm_tuner.tuner.serving.scoring" in report["loaded"]
    expected = ScoringPolicy.load(policy_dir).predict(test_frame)
    np.testing.assert_allclose(report["direct"], expected, rtol=1e-6, atol=1e-7)
    scored = pq.read_table(tmp_path / "scores.parquet")
    assert report["rows"] == len(test_frame) and scored.column_names == list(test_frame.columns) + [OUTPUT_COLUMN]
    np.testing.assert_allclose(scored[OUTPUT_COLUMN].to_numpy(), expected, rtol=1e-6, atol=1e-7)
