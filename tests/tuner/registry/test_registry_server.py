"""The registry lock and the alias history through an MLflow tracking server (REST, PostgreSQL behind it), as a
team shares them: what the embedded SQLite store proves must hold where the only thing shared is the server."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from mlflow import MlflowClient

from deepfm_tuner.model.data.frames import split_rows
from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.model.train import train
from deepfm_tuner.tuner.registry.history import read_history
from deepfm_tuner.tuner.registry.lock import RegistryBusyError, registry_lock
from deepfm_tuner.tuner.registry.promotion import promote_policy
from deepfm_tuner.tuner.registry.rollback import rollback

from conftest import TINY_POLICY, TINY_TRAINING
from services import ServiceError, missing_reason, mlflow_server, postgres_server

pytestmark = [pytest.mark.slow, pytest.mark.services]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    try:
        with postgres_server(("mlflow",)) as pg, \
                mlflow_server(pg.url("mlflow"), tmp_path_factory.mktemp("server") / "artifacts") as uri:
            yield uri
    except ServiceError as exc:  # a start failure is a test failure here, never a skip
        pytest.fail(f"could not start the services: {exc}")


def test_lock_promotion_history_and_rollback_through_a_tracking_server(server, tiny_prepared, tiny_frame, tmp_path):
    client = MlflowClient(tracking_uri=server, registry_uri=server)
    with registry_lock(client, "ctr", "a promotion elsewhere", heartbeat_s=0.2), \
            pytest.raises(RegistryBusyError, match="'ctr' is locked by a promotion elsewhere"), \
            registry_lock(client, "ctr", "a waiter", wait_s=1.0, stale_after_s=30):
        pass
    assert client.search_registered_models() == []  # given back

    test_frame = tiny_frame.iloc[split_rows(len(tiny_frame), seed=0).test].reset_index(drop=True)
    trained = train(tiny_prepared, TINY_POLICY, TINY_TRAINING.replace(max_epochs=1))
    good = ScoringPolicy(TINY_POLICY, TINY_TRAINING, tiny_prepared.encoder, trained.model, {}).save(tmp_path / "good")
    weak = ScoringPolicy.build(dataclasses.replace(TINY_POLICY, embedding_dim=8), TINY_TRAINING,
                               tiny_prepared.encoder).save(tmp_path / "weak")
    experiment = client.create_experiment("registry-server")

    def promote(policy_dir: Path, run_id: str | None = None):
        if run_id is None:
            run_id = client.create_run(experiment).info.run_id
            client.set_terminated(run_id)
        return promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=test_frame, registered_name="ctr",
                              tags={"study": "tiny"}, client=client)

    first = promote(weak)
    second = promote(good)
    again = promote(good, run_id=client.get_model_version("ctr", "2").run_id)
    assert (first.version, second.version, second.alias) == (1, 2, "champion")
    assert (again.version, again.registered) == (2, False)
    assert rollback(client, "ctr").to_version == 1
    events = read_history(client, "ctr")
    assert [(e.action, e.from_version, e.to_version) for e in events] == [
        ("rollback", 2, 1), ("replaced", 1, 2), ("first_champion", None, 1)]
    assert int(client.get_model_version_by_alias("ctr", "champion").version) == 1
    assert [m.name for m in client.search_registered_models()] == ["ctr"]
