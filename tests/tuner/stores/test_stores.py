"""Issue #11 item 17: every command resolves its stores by one order (flag > DEEPFM_* > study file >
MLFLOW_TRACKING_URI > embedded default), from one option definition that shows the variables in --help; the
Optuna heartbeat settings come from the environment too."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from deepfm_tuner.tuner.cli import main
from deepfm_tuner.tuner.stores.locations import DEFAULT_OPTUNA_STORAGE, DEFAULT_TRACKING_URI, resolve_stores
from deepfm_tuner.tuner.stores.optuna_storage import resolve_storage

from support import assert_one_line_error, run

FLAG_S, ENV_S, FILE_S = "sqlite:///flag/o.db", "sqlite:///env/o.db", "sqlite:///file/o.db"
FLAG_T, ENV_T, FILE_T, MLF_T = "sqlite:///flag/m.db", "sqlite:///env/m.db", "sqlite:///file/m.db", "http://mlflow:5000"


@pytest.mark.parametrize("flags, env, study, expected", [
    # flag > DEEPFM_* > study file > MLFLOW_TRACKING_URI > default
    ((FLAG_S, FLAG_T), {"DEEPFM_STORAGE": ENV_S, "DEEPFM_TRACKING_URI": ENV_T, "MLFLOW_TRACKING_URI": MLF_T},
     (FILE_S, FILE_T), (FLAG_S, FLAG_T)),
    ((None, None), {"DEEPFM_STORAGE": ENV_S, "DEEPFM_TRACKING_URI": ENV_T, "MLFLOW_TRACKING_URI": MLF_T},
     (FILE_S, FILE_T), (ENV_S, ENV_T)),
    ((None, None), {"MLFLOW_TRACKING_URI": MLF_T}, (FILE_S, FILE_T), (FILE_S, FILE_T)),
    ((None, None), {"MLFLOW_TRACKING_URI": MLF_T}, (None, None), (DEFAULT_OPTUNA_STORAGE, MLF_T)),
    ((None, None), {}, (None, None), (DEFAULT_OPTUNA_STORAGE, DEFAULT_TRACKING_URI)),
    ((None, None), {}, "no study file", (DEFAULT_OPTUNA_STORAGE, DEFAULT_TRACKING_URI)),
    ((None, FLAG_T), {"DEEPFM_STORAGE": ENV_S}, (FILE_S, None), (ENV_S, FLAG_T)),
])
def test_one_precedence_for_every_store(flags, env, study, expected):
    spec = None if isinstance(study, str) else SimpleNamespace(storage=study[0], tracking_uri=study[1])
    stores = resolve_stores(*flags, spec, environ=env)
    assert (stores.storage_url, stores.tracking_uri) == expected


def test_the_library_follows_the_same_order_as_the_cli(monkeypatch, tmp_path):
    """init_study (and tune) called without stores resolve them as the CLI does: DEEPFM_STORAGE beats the study file."""
    monkeypatch.setenv("DEEPFM_STORAGE", f"sqlite:///{tmp_path}/env.db")
    spec = SimpleNamespace(storage=f"sqlite:///{tmp_path}/file.db", tracking_uri=None)
    assert resolve_storage(resolve_stores(spec=spec).storage_url) == f"sqlite:///{tmp_path}/env.db"


@pytest.mark.parametrize("command, variables", [
    ("tune", ["DEEPFM_STORAGE", "DEEPFM_TRACKING_URI"]),
    ("init", ["DEEPFM_STORAGE", "DEEPFM_TRACKING_URI"]),
    ("status", ["DEEPFM_STORAGE", "DEEPFM_TRACKING_URI"]),
    ("report", ["DEEPFM_STORAGE", "DEEPFM_TRACKING_URI"]),
    ("promote", ["DEEPFM_STORAGE", "DEEPFM_TRACKING_URI"]),
    ("ui", ["DEEPFM_TRACKING_URI"]),
    ("dashboard", ["DEEPFM_STORAGE"]),
    ("pull", ["DEEPFM_TRACKING_URI"]),
    ("score", ["DEEPFM_TRACKING_URI"]),
])
def test_every_command_help_lists_its_environment_variables(command, variables):
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name in variables:
        assert f"env var: {name}" in text, text
    if "DEEPFM_TRACKING_URI" in variables:
        assert "MLFLOW_TRACKING_URI" in text


@pytest.mark.parametrize("args", [
    ["pull", "ctr", "--out", "o"],
    ["score", "--model", "ctr", "--input", "x.csv", "--output", "y.csv"],
    ["ui"],
])
def test_registry_and_ui_commands_honour_deepfm_tracking_uri(in_tmp, monkeypatch, args):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DEEPFM_TRACKING_URI", f"sqlite:///{in_tmp}/team/mlflow.db")
    assert_one_line_error(run(*args), f"no MLflow store at {in_tmp}/team/mlflow.db")
    assert not (in_tmp / "mlruns").exists()


@pytest.mark.parametrize("env, message", [
    ({"DEEPFM_HEARTBEAT_SECONDS": "0"}, "DEEPFM_HEARTBEAT_SECONDS='0' must be a whole number"),
    ({"DEEPFM_GRACE_SECONDS": "soon"}, "DEEPFM_GRACE_SECONDS='soon' must be a whole number"),
    ({"DEEPFM_HEARTBEAT_SECONDS": "5", "DEEPFM_GRACE_SECONDS": "5"}, "must be larger than DEEPFM_HEARTBEAT_SECONDS"),
])
def test_bad_heartbeat_settings_name_the_variable(monkeypatch, env, message):
    from deepfm_tuner.model.errors import ConfigError
    from deepfm_tuner.tuner.stores.optuna_storage import heartbeat_settings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        heartbeat_settings()


def test_heartbeat_settings_come_from_the_environment(monkeypatch):
    from deepfm_tuner.tuner.stores.optuna_storage import GRACE_SECONDS, HEARTBEAT_SECONDS, heartbeat_settings

    monkeypatch.delenv("DEEPFM_HEARTBEAT_SECONDS", raising=False)
    monkeypatch.delenv("DEEPFM_GRACE_SECONDS", raising=False)
    assert heartbeat_settings() == (HEARTBEAT_SECONDS, GRACE_SECONDS)
    monkeypatch.setenv("DEEPFM_HEARTBEAT_SECONDS", "2")
    monkeypatch.setenv("DEEPFM_GRACE_SECONDS", "7")
    assert heartbeat_settings() == (2, 7)
