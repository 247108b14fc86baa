"""Issue #18 item 10: one registry version per checkpoint. Re-promoting registers nothing new, two processes
promoting the same run at once leave one version, a refused candidate leaves no version behind, and the registry
lock that makes this safe across processes (and machines) recovers from a holder that died."""

from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path

import pytest
from mlflow import MlflowClient

from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.tuner.registry.lock import TAG_HEARTBEAT, TAG_OWNER, TAG_PURPOSE, RegistryBusyError, registry_lock
from deepfm_tuner.tuner.registry.promotion import PromotionCheckError, promote_policy
from deepfm_tuner.tuner.registry.refs import lock_name
from deepfm_tuner.tuner.stores.sqlite import absolute_sqlite

from conftest import TINY_POLICY, TINY_TRAINING
from support import killed_at_exit, stored_policy_dir, truncate

TAGS = {"study": "tiny", "trial_number": "1"}


@pytest.fixture(scope="module")
def bad_dir(tiny_prepared, tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)  # untrained weights: no better than chance
    return ScoringPolicy.build(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder).save(
        tmp_path_factory.mktemp("bad") / "policy")


class Store:
    """An embedded SQLite store (WAL, as `deepfm tune` opens it) through an explicit client."""

    def __init__(self, root: Path):
        self.uri = absolute_sqlite(f"sqlite:///{root}/mlflow.db")
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment = self.client.create_experiment("e", artifact_location=(root / "artifacts").as_uri())

    def finished_run(self) -> str:
        run_id = self.client.create_run(self.experiment).info.run_id
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def versions(self, name: str) -> list[int]:
        return sorted(int(v.version) for v in self.client.search_model_versions(f"name = '{name}'"))

    def promote(self, run_id: str, policy_dir: Path, test_frame, **kwargs):
        return promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=test_frame, registered_name="ctr",
                              tags=TAGS, client=self.client, **kwargs)


@pytest.fixture()
def store(tmp_path) -> Store:
    return Store(tmp_path)


def test_promoting_the_same_checkpoint_again_registers_nothing(store, good_dir, test_frame):
    run_id = store.finished_run()
    first = store.promote(run_id, good_dir, test_frame)
    again = store.promote(run_id, good_dir, test_frame)
    assert (first.version, first.registered) == (1, True)
    assert (again.version, again.alias, again.registered) == (1, "champion", False)
    assert again.reason.startswith("already the champion: version 1 holds this checkpoint")
    assert again.test_auc == pytest.approx(first.test_auc, abs=1e-6)
    assert store.versions("ctr") == [1]
    assert len(store.client.search_logged_models([store.experiment])) == 1  # not logged to the run twice either


@pytest.mark.slow
def test_a_registered_checkpoint_is_compared_again_and_aliased_if_it_wins(store, good_dir, bad_dir, test_frame):
    weak_run, strong_run = store.finished_run(), store.finished_run()
    store.promote(weak_run, bad_dir, test_frame)  # v1: the first champion
    assert store.promote(strong_run, good_dir, test_frame).alias == "champion"  # v2 replaces it
    again = store.promote(weak_run, bad_dir, test_frame)  # v1's checkpoint again: compared, loses
    assert (again.version, again.alias, again.registered) == (1, "challenger", False)
    assert "kept as challenger" in again.reason
    forced = store.promote(weak_run, bad_dir, test_frame, force=True)
    assert (forced.version, forced.alias, forced.registered) == (1, "champion", False)
    assert store.versions("ctr") == [1, 2]
    assert int(store.client.get_model_version_by_alias("ctr", "champion").version) == 1


def test_a_candidate_refused_because_the_champion_cannot_score_leaves_no_version(store, good_dir, bad_dir,
                                                                                test_frame):
    store.promote(store.finished_run(), good_dir, test_frame)
    truncate(stored_policy_dir(store.client, "ctr", 1) / "weights.pt")  # the champion's stored files damaged
    with pytest.raises(PromotionCheckError, match="champion .* cannot score .*no alias moved and no new version "
                                                  "was kept") as info:
        store.promote(store.finished_run(), bad_dir, test_frame)
    assert "\n" not in str(info.value)
    assert store.versions("ctr") == [1]
    assert int(store.client.get_model_version_by_alias("ctr", "champion").version) == 1
    assert [m.name for m in store.client.search_registered_models()] == ["ctr"]  # and no lock left behind
    assert len(store.client.search_logged_models([store.experiment])) == 1  # nor the refused one's logged model


def _promote_at_once(uri: str, experiment: str, run_id: str, policy_dir: str, frame, barrier, results) -> None:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    barrier.wait()
    result = promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=frame, registered_name="ctr",
                            tags=TAGS, client=client)
    results.put((result.version, result.alias, result.registered))


@pytest.mark.slow
def test_two_processes_promoting_the_same_run_at_once_leave_one_version(store, good_dir, test_frame):
    """Two `deepfm tune` processes finishing one study, or `deepfm promote` run twice at once."""
    run_id = store.finished_run()
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no MLflow engine shared across a fork
    barrier, results = ctx.Barrier(2), ctx.Queue()
    with killed_at_exit([ctx.Process(target=_promote_at_once, args=(
            store.uri, store.experiment, run_id, str(good_dir), test_frame, barrier, results)) for _ in range(2)]) \
            as processes:
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=240)
        assert [p.exitcode for p in processes] == [0, 0]
    outcomes = sorted(results.get(timeout=5) for _ in range(2))
    assert outcomes == [(1, "champion", False), (1, "champion", True)]
    assert store.versions("ctr") == [1]
    assert [m.name for m in store.client.search_registered_models()] == ["ctr"]


# -- the registry lock -------------------------------------------------------------------------------
def _leave_lock(client: MlflowClient, owner: str) -> None:
    client.create_registered_model(lock_name("ctr"), tags={TAG_OWNER: owner, TAG_PURPOSE: "the promotion of run x",
                                                           TAG_HEARTBEAT: "1"})


def test_a_lock_left_by_a_dead_process_on_this_machine_is_taken_over(store):
    dead = multiprocessing.get_context("fork").Process(target=os.getpid)
    dead.start()
    dead.join()
    _leave_lock(store.client, f"{socket.gethostname()}:{dead.pid}:abc")
    with registry_lock(store.client, "ctr", "a test", stale_after_s=300, wait_s=30):
        owner = store.client.get_registered_model(lock_name("ctr")).tags[TAG_OWNER]
        assert owner.startswith(f"{socket.gethostname()}:{os.getpid()}:")
    assert store.client.search_registered_models() == []


def test_a_lock_whose_heartbeat_stopped_is_taken_over(store):
    _leave_lock(store.client, "another-machine:123:abc")  # a holder elsewhere: only its heartbeat can tell
    with registry_lock(store.client, "ctr", "a test", stale_after_s=1.0, wait_s=30):
        assert store.client.get_registered_model(lock_name("ctr")).tags[TAG_PURPOSE] == "a test"
    assert store.client.search_registered_models() == []


def test_a_live_lock_makes_a_waiter_give_up_in_one_line_naming_the_holder(store):
    busy = (rf"'ctr' is locked by the promotion of run abc on .* \(pid {os.getpid()}\).*"
            r"delete the registered model 'ctr.lock'")
    with registry_lock(store.client, "ctr", "the promotion of run abc", heartbeat_s=0.2), \
            pytest.raises(RegistryBusyError, match=busy), \
            registry_lock(store.client, "ctr", "a waiter", wait_s=1.5, stale_after_s=1.0):
        pass
    assert store.client.search_registered_models() == []
