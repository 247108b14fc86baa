"""Real services for the team-mode tests: a throwaway PostgreSQL cluster and an MLflow tracking server.

    with postgres_server() as pg, mlflow_server(pg.url("mlflow"), artifacts) as tracking_uri:
        ... pg.url("optuna") ...

PostgreSQL is started with `initdb` + `pg_ctl` from PATH or /usr/lib/postgresql/*/bin (Debian/Ubuntu's
`apt-get install postgresql`). PostgreSQL refuses to run as root, so under root the cluster runs as the
`postgres` OS user in a temp directory it owns. Both services listen on 127.0.0.1 on free ports; teardown
always stops them (and removes their directories), whatever the test did.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PG_USER, PG_PASSWORD = "deepfm", "deepfm-test-pw"
DATABASES = ("optuna", "mlflow")

# The command every team-mode worker runs: on another machine, as a docker-compose `worker`, in the native tests
# (tests/test_compose.py checks that docker-compose.yml runs exactly this).
WORKER_TUNE_ARGS = ("tune", "{study}", "--storage", "{storage}", "--tracking-uri", "{tracking_uri}",
                    "--workers", "1", "--no-promote")


def worker_args(study: str, storage: str, tracking_uri: str) -> list[str]:
    """`deepfm` arguments of one worker (without the program name)."""
    values = {"{study}": study, "{storage}": storage, "{tracking_uri}": tracking_uri}
    return [values.get(arg, arg) for arg in WORKER_TUNE_ARGS]


class ServiceError(RuntimeError):
    """A service did not start; the message carries the tail of its log."""


def find_pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, else the newest /usr/lib/postgresql/<ver>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    for initdb in reversed(candidates):
        if (Path(initdb).parent / "pg_ctl").exists():
            return Path(initdb).parent
    return None


def missing_reason() -> str | None:
    """Why the service tests cannot run here, or None when they can."""
    if find_pg_bin() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin; "
                "install them with 'apt-get install -y postgresql'")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' OS user to run PostgreSQL as (PostgreSQL refuses root)"
    if not shutil.which("mlflow", path=str(Path(sys.executable).parent)) and not shutil.which("mlflow"):
        return "the 'mlflow' command is not installed"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Postgres:
    port: int
    data_dir: Path
    user: str = PG_USER
    password: str = PG_PASSWORD

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()


@contextlib.contextmanager
def postgres_server(databases: tuple[str, ...] = DATABASES, timeout: float = 60.0) -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on 127.0.0.1:<free port> with `databases` created; always stopped."""
    reason = missing_reason()
    if reason:
        raise ServiceError(reason)
    bindir = find_pg_bin()
    as_root = os.geteuid() == 0
    run_as = {"user": "postgres", "group": pwd.getpwnam("postgres").pw_gid} if as_root else {}
    root = Path(tempfile.mkdtemp(prefix="deepfm-pg-"))  # /tmp, not pytest's root-only tmp_path
    data, log, pwfile = root / "data", root / "server.log", root / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    if as_root:
        pg = pwd.getpwnam("postgres")
        for path in (root, pwfile):
            os.chown(path, pg.pw_uid, pg.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    port = free_port()
    started = False
    try:
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--pwfile", str(pwfile),
                        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, env=env, cwd=root, **run_as)
        started = True
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='{root}' "
                   f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        proc = subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                               "-w", "-t", str(int(timeout)), "start"],
                              capture_output=True, text=True, env=env, cwd=root, **run_as)
        if proc.returncode != 0:
            raise ServiceError(f"pg_ctl start failed ({proc.stderr.strip()}):\n{_tail(log)}")
        server = Postgres(port, data)
        for name in databases:
            server.create_database(name)
        yield server
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"initdb failed: {exc.stderr.decode(errors='replace')[-2000:]}") from None
    finally:
        if started:
            subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, env=env, cwd=root, **run_as)
        shutil.rmtree(root, ignore_errors=True)


def mlflow_executable() -> str:
    local = Path(sys.executable).parent / "mlflow"
    return str(local) if local.exists() else (shutil.which("mlflow") or "mlflow")


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts_dir: Path, timeout: float = 120.0) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1:<free port> over `backend_store_uri`, serving artifacts from `artifacts_dir`.

    Yields the tracking URI (http://127.0.0.1:PORT); the server's process group is stopped on exit.
    """
    port = free_port()
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    log = artifacts_dir.parent / f"mlflow-server-{port}.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = [mlflow_executable(), "server", "-w", "1", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts_dir),
            "--serve-artifacts"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ServiceError(f"mlflow server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"mlflow server not healthy after {timeout:.0f}s:\n{_tail(log)}")
            time.sleep(0.5)
        yield uri
    finally:
        stop_group(proc, grace=3.0)  # nothing to flush: the store is PostgreSQL


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM a process's group (it must have been started with start_new_session=True), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (server workers)
