"""Read-only and full disks (mlruns/, --out, --output): one line, exit 2, no retries, nothing half-written.

Tests run as root in CI, where chmod does not stop writes: a real read-only (or tiny, full) tmpfs is mounted
instead; elsewhere a chmod-ed directory does the same job."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from deepfm_tuner.tuner.stores.retry import retry

from support import POLICY, assert_one_line_error, run

STUDY = {"study": {"name": "t", "n_trials": 1}, "data": {"synthetic": {"rows": 600}},
         "training": {"batch_size": 256, "max_epochs": 1, "device": "cpu", "threads": 1}}


def _mount_tmpfs(path, options: str) -> None:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture()
def read_only_dir(in_tmp):
    path = in_tmp / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    _mount_tmpfs(path, "ro,size=1m")
    yield path
    subprocess.run(["umount", str(path)], check=True)


@pytest.fixture()
def small_dir(in_tmp):
    """An empty 64 KiB file system."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    path = in_tmp / "small"
    path.mkdir()
    _mount_tmpfs(path, "size=64k")
    yield path
    subprocess.run(["umount", str(path)], check=True)


@pytest.fixture()
def full_dir(small_dir):
    try:
        with open(small_dir / "filler", "wb") as handle:
            while True:
                handle.write(bytes(4096))
                handle.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    return small_dir


def test_tune_with_a_read_only_store_is_one_line_without_retries(in_tmp, read_only_dir, study_file):
    study_file(STUDY, "s.yaml", study__storage=f"sqlite:///{read_only_dir}/optuna.db",
               study__tracking_uri=f"sqlite:///{read_only_dir}/mlflow.db")
    started = time.monotonic()
    assert_one_line_error(run("tune", "s.yaml"), f"cannot write to {read_only_dir}", "writable")
    assert time.monotonic() - started < 30
    assert not (in_tmp / "mlruns").exists()


def test_train_out_on_a_read_only_disk_fails_before_training(in_tmp, read_only_dir):
    (in_tmp / "policy.yaml").write_text(POLICY)
    result = run("train", "--policy", "policy.yaml", "--synthetic", 500, "--out", read_only_dir / "p")
    assert_one_line_error(result, f"cannot write to {read_only_dir / 'p'}", "pass --out")


def test_train_out_on_a_full_disk_fails_before_training(in_tmp, full_dir):
    (in_tmp / "policy.yaml").write_text(POLICY)
    result = run("train", "--policy", "policy.yaml", "--synthetic", 500, "--out", full_dir / "p")
    assert_one_line_error(result, f"cannot write to {full_dir / 'p'}: it is on a full disk", "pass --out")
    assert not (full_dir / "p").exists()


def test_score_output_on_a_read_only_disk_fails_before_loading_the_model(in_tmp, read_only_dir):
    result = run("score", "--model", "models:/x@champion", "--input", "rows.csv", "--output", read_only_dir / "s.csv")
    assert_one_line_error(result, f"cannot write to {read_only_dir}", "pass --output")


def test_a_disk_that_fills_up_mid_write_is_one_line(in_tmp, small_dir):
    result = run("data", "synth", "--rows", 20_000, "--out", small_dir / "d")  # the check at the edge passes
    assert_one_line_error(result, "it is on a full disk", "free some space or write elsewhere")


def test_retry_never_retries_a_read_only_or_full_disk():
    calls = []

    def write():
        calls.append(1)
        raise OSError(errno.EROFS, "Read-only file system (connection reset)")

    with pytest.raises(OSError):
        retry(write, base_delay=0.01)
    assert len(calls) == 1
    calls.clear()

    def locked_and_full():
        calls.append(1)
        raise RuntimeError("database or disk is full; database is locked")

    with pytest.raises(RuntimeError):
        retry(locked_and_full, base_delay=0.01)
    assert len(calls) == 1


def test_an_encoded_dataset_that_fills_its_disk_is_one_line_and_leaves_nothing(in_tmp, small_dir, tiny_criteo_dir,
                                                                                 study_file):
    study_file({"study": {"name": "s"}, "data": {"train": str(tiny_criteo_dir / "train.tsv"), "format": "criteo",
                                                 "encoded_dir": str(small_dir / "encoded")}}, "s.yaml")
    result = run("data", "prepare", "s.yaml")
    assert_one_line_error(result, f"cannot write the encoded dataset under {small_dir / 'encoded'}",
                          "No space left on device", "set data.encoded_dir")
    assert [p.name for p in (small_dir / "encoded").iterdir() if p.is_dir()] == []  # no partial build left
