"""Team mode against real services: several `deepfm tune` workers on one study over PostgreSQL + an MLflow server.

One PostgreSQL cluster and one MLflow server (PostgreSQL backend, served artifacts) are started for the module;
each test uses its own study. Workers are real processes running the same `deepfm tune` command a remote machine
or a docker-compose worker runs (`services.worker_args`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services import ServiceError, missing_reason, mlflow_server, postgres_server, stop_group, worker_args
from support import killed_at_exit

SKIP_REASON = missing_reason()
FAST_HEARTBEAT = {"DEEPFM_HEARTBEAT_SECONDS": "1", "DEEPFM_GRACE_SECONDS": "4"}
WAIT_SECONDS = 240
STUDY = {  # a tiny study: 3,000 synthetic rows, 2 epochs, a small space with a pruner; each test names its own
    "study": {"metric": "val_auc", "sampler": {"type": "tpe", "seed": 7, "n_startup_trials": 4},
              "pruner": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 1}},
    "data": {"synthetic": {"rows": 3000, "seed": 1, "max_cardinality": 200}},
    "training": {"batch_size": 256, "max_epochs": 2, "patience": 1, "seed": 0, "threads": 1},
    "policy_configs": {"scoring_policy": {
        "policy_type": "deepfm", "embedding_dim": {"choices": [4, 8]},
        "deep_hidden_units": {"choices": [[16, 8], [32]]}, "activation_fn": "relu",
        "dropout": {"low": 0.0, "high": 0.2, "step": 0.1},
        "learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True}}},
}


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """(postgres, tracking_uri): a PostgreSQL cluster with databases optuna + mlflow, and an MLflow server."""
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    artifacts = tmp_path_factory.mktemp("mlflow-server") / "artifacts"
    try:
        with postgres_server() as pg, mlflow_server(pg.url("mlflow"), artifacts) as uri:
            yield pg, uri
    except ServiceError as exc:  # a start failure is a test failure here, never a skip
        pytest.fail(f"could not start the services: {exc}")


@pytest.fixture()
def launcher(tmp_path):
    """Start `python -m tuner.cli ...` processes (each its own process group); all are stopped at teardown."""
    started: list[subprocess.Popen] = []

    def launch(args, *, name, extra_env=None) -> subprocess.Popen:
        env = {**os.environ, **FAST_HEARTBEAT, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        log = open(tmp_path / f"{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "deepfm_tuner.tuner.cli", *args], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        proc.log_path = tmp_path / f"{name}.log"
        log.close()
        started.append(proc)
        return proc

    yield launch
    for proc in started:
        stop_group(proc, grace=5)


def wait_all(procs, timeout=WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {proc.args} still running after {timeout}s; log:\n{_tail(proc)}")


def _tail(proc, lines=40) -> str:
    return "\n".join(Path(proc.log_path).read_text(errors="replace").splitlines()[-lines:])


def assert_ok(proc) -> None:
    assert proc.returncode == 0, f"{' '.join(map(str, proc.args[3:]))} exited {proc.returncode}:\n{_tail(proc)}"


def load(storage: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


def mlflow_runs(uri: str, experiment: str, role: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`deepfm.role` = '{role}'",
                                      max_results=1000)


def finished(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]


@pytest.mark.slow
@pytest.mark.services
def test_three_local_workers_share_one_study_and_promote_once(services, launcher, study_file):
    pg, uri = services
    storage = pg.url("optuna")
    study_path = study_file(STUDY, study__name="team3", study__n_trials=12, study__registered_model="deepfm-team3")
    proc = launcher(["tune", str(study_path), "--storage", storage, "--tracking-uri", uri, "--workers", "3"],
                    name="tune-workers-3")
    wait_all([proc])
    assert_ok(proc)
    output = Path(proc.log_path).read_text()
    assert "3 local workers x 1 torch thread" in output  # 2 cores here: never more threads than cores in total
    assert "exited with code" not in output, "a worker failed"
    own = "\n".join(line for line in output.splitlines() if not line.startswith("[worker"))
    assert pg.password not in own, "the parent printed the database password"
    assert "(miss: encoded now)" in own  # the coordinator encoded the data once, before any worker started
    worker_lines = [line for line in output.splitlines() if line.startswith("[worker")]
    assert len([line for line in worker_lines if "(hit: mapped)" in line]) == 3, "a worker encoded the data"

    study = load(storage, "team3")
    done = finished(study)
    assert len(done) == 12
    assert len({t.number for t in done}) == 12
    assert not [t for t in study.get_trials(deepcopy=False) if t.state.name in ("RUNNING", "WAITING")]
    assert len({t.user_attrs["worker"] for t in done}) >= 2, "the trials were not shared between workers"

    client, parents = mlflow_runs(uri, "deepfm-team3", "study")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id
    _, runs = mlflow_runs(uri, "deepfm-team3", "trial")
    assert len(runs) == 12
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent_id}
    assert sorted(int(r.data.tags["deepfm.trial_number"]) for r in runs) == sorted(t.number for t in done)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert {t.user_attrs["mlflow_run_id"] for t in done} == {r.info.run_id for r in runs}

    champion = client.get_model_version_by_alias("deepfm-team3", "champion")
    if champion.tags.get("chosen_by") == "baseline_guard":  # 300 test rows: the best-by-validation trial can lose
        assert champion.tags["guard.tuned_trial"] == str(study.best_trial.number)  # to the baseline (the guard)
        assert "baseline guard: the tuned candidate" in output
        assert champion.run_id == study.trials[0].user_attrs["mlflow_run_id"]
    else:
        assert champion.run_id == study.best_trial.user_attrs["mlflow_run_id"]
    assert len(client.search_model_versions("name = 'deepfm-team3'")) == 1, "promoted more than once"
    assert "-> alias 'champion'" in output


@pytest.mark.slow
@pytest.mark.services
def test_killed_worker_trial_is_failed_and_rerun_by_a_live_worker(services, launcher, study_file):
    import optuna

    pg, uri = services
    storage = pg.url("optuna")
    total = 9
    study_path = study_file(STUDY, study__name="fault", study__n_trials=total, study__registered_model="deepfm-fault",
                            training__batch_size=32)  # slower trials: room to kill
    args = worker_args(str(study_path), storage, uri)
    workers = [launcher(args, name=f"worker-{i}") for i in range(3)]
    by_pid = {w.pid: w for w in workers}

    victim_trial = victim = None
    deadline = time.monotonic() + 120
    while victim is None:
        assert time.monotonic() < deadline, "no trial started within 120s:\n" + _tail(workers[0])
        for w in workers:
            assert w.poll() is None, f"worker ended before the kill:\n{_tail(w)}"
        try:
            trials = load(storage, "fault").get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # not created yet
            trials = []
        for t in trials:  # a trial with no epoch reported yet: it cannot finish before the kill lands
            if ("mlflow_run_id" in t.user_attrs and not t.intermediate_values
                    and int(t.user_attrs.get("worker", ":0").split(":")[1]) in by_pid):
                victim_trial, victim = t, by_pid[int(t.user_attrs["worker"].split(":")[1])]
                break
        else:
            time.sleep(0.1)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    live = [w for w in workers if w is not victim]
    wait_all(live)
    for w in live:
        assert_ok(w)

    study = load(storage, "fault")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    dead = trials[victim_trial.number]
    assert dead.state.name == "FAIL"
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1, f"expected one retry of trial {dead.number}"
    retried = retries[0]
    assert retried.state.name in ("COMPLETE", "PRUNED")
    assert retried.params == dead.params
    assert len(finished(study)) == total
    assert not [t for t in trials.values() if t.state.name in ("RUNNING", "WAITING")]

    client, runs = mlflow_runs(uri, "deepfm-fault", "trial")
    by_id = {r.info.run_id: r for r in runs}
    dead_run = by_id[dead.user_attrs["mlflow_run_id"]]
    assert dead_run.info.status == "FAILED"
    assert "no heartbeat" in dead_run.data.tags.get("deepfm.failure_reason", "")
    retry_run = by_id[retried.user_attrs["mlflow_run_id"]]
    assert retry_run.data.tags["deepfm.retry_of_run_id"] == dead_run.info.run_id
    assert not [r for r in runs if r.info.status == "RUNNING"]
    _, parents = mlflow_runs(uri, "deepfm-fault", "study")
    assert len(parents) == 1 and parents[0].info.status != "RUNNING"


@pytest.mark.slow
@pytest.mark.services
def test_two_workers_started_at_once_on_a_new_database_share_one_study(services, launcher, study_file):
    pg, uri = services
    pg.create_database("optuna_race")  # brand new: the workers race to create Optuna's tables too
    storage = pg.url("optuna_race")
    study_path = study_file(STUDY, study__name="race", study__n_trials=4, study__registered_model="deepfm-race")
    args = worker_args(str(study_path), storage, uri)
    first, second = launcher(args, name="race-1"), launcher(args, name="race-2")
    wait_all([first, second])
    assert_ok(first)
    assert_ok(second)

    import optuna

    assert optuna.get_all_study_names(storage) == ["race"]
    study = load(storage, "race")
    assert len(finished(study)) == 4
    _, parents = mlflow_runs(uri, "deepfm-race", "study")
    assert len(parents) == 1
    assert study.user_attrs["mlflow_parent_run_id"] == parents[0].info.run_id
    _, runs = mlflow_runs(uri, "deepfm-race", "trial")
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    assert len(runs) == 4


@pytest.mark.slow
@pytest.mark.services
def test_team_workers_on_a_sample_train_the_refits_once(services, launcher, study_file):
    """data.tune_rows + study.refit in team mode: every worker ends by summarising the study; they take turns
    under a lock on the storage, so the two candidates and the V1 baseline are each refit once, by one worker."""
    pg, uri = services
    storage = pg.url("optuna")
    study_path = study_file(STUDY, study__name="teamrefit", study__n_trials=4,
                            study__registered_model="deepfm-teamrefit", data__tune_rows=500,
                            study__refit={"candidates": 2})
    args = worker_args(str(study_path), storage, uri)
    first, second = launcher(args, name="refit-1"), launcher(args, name="refit-2")
    wait_all([first, second])
    assert_ok(first)
    assert_ok(second)

    study = load(storage, "teamrefit")
    assert len(finished(study)) == 4
    record = study.user_attrs["refit"]
    assert len(record["candidates"]) == 2 and record["refit_baseline"]["state"] == "COMPLETE"
    _, refits = mlflow_runs(uri, "deepfm-teamrefit", "refit")
    _, baselines = mlflow_runs(uri, "deepfm-teamrefit", "refit_baseline")
    assert sorted(r.info.run_id for r in refits) == sorted(e["run_id"] for e in record["candidates"])
    assert [r.info.run_id for r in baselines] == [record["refit_baseline"]["run_id"]]
    assert {r.info.status for r in refits + baselines} == {"FINISHED"}
    outputs = [Path(proc.log_path).read_text() for proc in (first, second)]
    trained = [sum(line.startswith(("refit (candidate", "refit: training")) for line in out.splitlines())
               for out in outputs]
    assert sorted(trained) == [0, 3], "the refits were not trained once, by one worker"


def _open_storage_at_once(url: str, barrier, results) -> None:
    from deepfm_tuner.tuner.stores.optuna_storage import open_storage

    barrier.wait()
    try:
        open_storage(url)
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
@pytest.mark.services
def test_storage_opened_by_three_processes_at_the_same_instant_on_a_new_database(services):
    """Unserialised, Optuna's CREATE TABLEs collide here (duplicate key ... pg_type_typname_nsp_index)."""
    pg, _ = services
    pg.create_database("optuna_barrier")
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_open_storage_at_once, args=(pg.url("optuna_barrier"), barrier, results))
             for _ in range(3)]
    with killed_at_exit(procs):
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=60)
    assert [results.get(timeout=5) for _ in procs] == ["ok"] * 3


# -- without services: local workers over the default SQLite stores -------------------------------------------
@pytest.mark.slow
def test_ctrl_c_stops_local_workers_and_closes_their_runs_on_sqlite(launcher, tmp_path, study_file):
    study_path = study_file(STUDY, study__name="local", study__n_trials=40, study__registered_model="deepfm-local",
                            training__batch_size=64)
    parent = launcher(["tune", str(study_path), "--workers", "2", "--no-promote"], name="local-workers")
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    deadline = time.monotonic() + 150
    while True:
        assert parent.poll() is None, f"ended early:\n{_tail(parent)}"
        assert time.monotonic() < deadline, f"no trials after 150s:\n{_tail(parent)}"
        try:
            trials = load(storage, "local").get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 - not created yet, or the file is busy
            trials = []
        if sum(t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs for t in trials) >= 2:
            break  # both workers are mid-trial
        time.sleep(0.2)
    os.kill(parent.pid, signal.SIGINT)  # what a terminal's Ctrl-C delivers to the foreground process
    parent.wait(timeout=90)
    assert parent.returncode != 0

    study = load(storage, "local")
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state.name == "RUNNING"], "a trial was left RUNNING"
    assert len({t.user_attrs.get("worker") for t in trials if "worker" in t.user_attrs}) == 2
    client, runs = mlflow_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "deepfm-local", "trial")
    assert not [r for r in runs if r.info.status == "RUNNING"], "an MLflow run was left RUNNING"
    assert [r for r in runs if r.info.status == "FAILED"], "the interrupted trials' runs were not closed as FAILED"
    _, parents = mlflow_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "deepfm-local", "study")
    assert [p.info.status for p in parents] == ["KILLED"]


def test_threads_are_split_between_local_workers():
    from deepfm_tuner.tuner.pipeline.workers import threads_per_worker

    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(3, cores=2) == 1
    assert threads_per_worker(4, cores=16) == 4


def test_a_local_worker_runs_the_same_command_as_a_remote_one():
    from deepfm_tuner.tuner.pipeline.workers import worker_command

    cmd = worker_command("studies/quick.yaml", threads=2, n_trials=12)
    assert cmd[1:3] == ["-m", "deepfm_tuner.tuner.cli"]
    assert cmd[3:] == ["tune", "studies/quick.yaml", "--workers", "1", "--no-promote", "--no-summary", "--threads", "2",
                       "--n-trials", "12"]
    template = worker_args("studies/quick.yaml", "DB", "URI")
    assert template[:2] == cmd[3:5] and set(["--workers", "1", "--no-promote"]) <= set(template)


