"""docker-compose.yml, its GPU override, the Dockerfile and .env.example, checked without Docker.

Docker cannot run in CI here, so these tests check what a typo would break: references between services,
variables without a value, a worker command that drifted from the one the native team-mode tests run, COPY
sources that do not exist, ports open beyond this machine, secrets in the committed files.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from services import worker_args

ROOT = Path(__file__).resolve().parents[1]
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}|(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def variables(text: str) -> set[str]:
    return {a or b for a, b in VARIABLE.findall(text)}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("docker-compose.yml")


def test_compose_files_parse_and_define_the_team_services(compose):
    assert {"postgres", "mlflow", "init", "worker", "optuna-dashboard"} <= set(compose["services"])
    gpu = load("docker-compose.gpu.yml")
    for name, service in gpu["services"].items():  # a base service, or one more GPU worker built on the base's
        assert name in compose["services"] or service["extends"] == {"file": "docker-compose.yml", "service": "worker"}


def test_depends_on_refers_to_existing_services_with_the_right_conditions(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert "profiles" not in services[dependency], f"{name} depends on optional {dependency}"
    assert services["worker"]["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    assert services["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["init"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("postgres", "mlflow"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck; depends_on would not wait for it"


def test_every_variable_used_is_defined_in_env_example():
    defined = env_example()
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        missing = variables((ROOT / name).read_text()) - set(defined)
        assert not missing, f"{name} uses {sorted(missing)}, which .env.example does not define"
    seen: set[str] = set()
    for key, value in defined.items():  # values may refer to variables defined above them
        assert variables(value) <= seen, f".env.example: {key} refers to {sorted(variables(value) - seen)} first"
        seen.add(key)


def test_worker_runs_the_same_deepfm_tune_command_as_the_native_team_mode_tests(compose):
    command = compose["services"]["worker"]["command"]
    assert command == ["deepfm", *worker_args("${STUDY}", "${OPTUNA_STORAGE}", "http://mlflow:5000")]
    init = compose["services"]["init"]["command"]
    assert init == ["deepfm", "init", "${STUDY}", "--storage", "${OPTUNA_STORAGE}", "--tracking-uri",
                    "http://mlflow:5000"]
    study = env_example()["STUDY"]
    assert (ROOT / study).is_file(), f".env.example STUDY={study} does not exist"


def test_the_default_study_file_is_a_valid_study():
    from deepfm_tuner.tuner.spec.study import load_study

    spec = load_study(ROOT / env_example()["STUDY"])
    assert spec.n_trials


def test_stores_are_postgres_databases_the_init_script_creates(compose):
    env = env_example()
    script = (ROOT / "docker" / "postgres-init.sql").read_text()
    mounts = compose["services"]["postgres"]["volumes"]
    assert any(m.startswith("./docker/postgres-init.sql:/docker-entrypoint-initdb.d/") for m in mounts)
    for key in ("OPTUNA_STORAGE", "MLFLOW_BACKEND_STORE_URI"):
        url = env[key]
        assert url.startswith("postgresql+psycopg2://") and "@postgres:5432/" in url
        database = url.rsplit("/", 1)[1]
        assert re.search(rf"CREATE DATABASE {database};", script), f"{database} is not created by the init script"
    assert env["OPTUNA_STORAGE"].rsplit("/", 1)[1] != env["MLFLOW_BACKEND_STORE_URI"].rsplit("/", 1)[1]
    command = compose["services"]["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    assert command[command.index("--backend-store-uri") + 1] == "${MLFLOW_BACKEND_STORE_URI}"
    assert "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] in [
        v.split(":")[1] for v in compose["services"]["mlflow"]["volumes"]]


def test_published_ports_are_bound_to_localhost_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"


def test_no_secrets_in_committed_files(compose):
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "docker-compose.gpu.yml").read_text()
    assert "change-me" not in text
    for service in compose["services"].values():
        environment = service.get("environment", {})
        for key, value in (environment.items() if isinstance(environment, dict) else []):
            if "PASSWORD" in key or "STORAGE" in key or "STORE_URI" in key:
                assert str(value).startswith("${"), f"{key} must come from .env, not be written in the file"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0, ".env (the real credentials) must be git-ignored"


def test_gpu_override_reserves_nvidia_devices_for_workers():
    worker = load("docker-compose.gpu.yml")["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "TORCH_INDEX_URL" in worker["build"]["args"]


def test_dockerfile_installs_cpu_torch_first_and_copies_existing_sources():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    torch_at = next(i for i, line in enumerate(instructions) if "torch" in line and line.startswith("RUN pip install"))
    project_at = next(i for i, line in enumerate(instructions) if line.startswith("RUN pip install ."))
    assert torch_at < project_at
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in instructions
    for line in instructions:
        if line.startswith("COPY"):
            sources = line.split()[1:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert any(line.startswith("USER ") and line != "USER root" for line in instructions)


def test_image_contains_what_pip_install_needs():
    """pyproject's readme and packages must be copied before `pip install .`."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    text = (ROOT / "Dockerfile").read_text()
    before_install = text[:text.index("RUN pip install .")]
    copied = {token.rstrip("/").removeprefix("./") for line in before_install.splitlines()
              if line.startswith("COPY") for token in line.split()[1:-1]}
    folders = set(project["tool"]["setuptools"]["package-dir"].values())  # the packages' folders in the repo
    assert all(package.split(".")[1] in folders for package in project["tool"]["setuptools"]["packages"])
    needed = {project["project"]["readme"], "pyproject.toml", *folders}
    assert needed <= copied, f"copy {sorted(needed - copied)} before 'pip install .'"
