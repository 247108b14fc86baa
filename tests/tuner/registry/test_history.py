"""Issue #17 section 2: every alias move is recorded on the registered model (`deepfm history`), `deepfm rollback`
puts the previous champion back (refusing a damaged version), `deepfm diff` compares two versions, and two
promotions at the same moment leave one consistent champion and a complete history."""

from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
from pathlib import Path

import pytest
from mlflow import MlflowClient

from deepfm_tuner.model.policy import ScoringPolicy
from deepfm_tuner.tuner.registry.history import AliasEvent, previous_champion, read_history
from deepfm_tuner.tuner.registry.promotion import promote_policy
from deepfm_tuner.tuner.stores.sqlite import absolute_sqlite

from conftest import TINY_POLICY, TINY_TRAINING
from support import assert_one_line_error, killed_at_exit, run, stored_policy_dir, truncate

WIDE_POLICY = dataclasses.replace(TINY_POLICY, embedding_dim=8)


@pytest.fixture(scope="module")
def bad_dir(tiny_prepared, tmp_path_factory) -> Path:
    """Untrained weights, a wider embedding: worse than good_dir, and a different V1 config."""
    import torch

    torch.manual_seed(0)
    return ScoringPolicy.build(WIDE_POLICY, TINY_TRAINING, tiny_prepared.encoder).save(
        tmp_path_factory.mktemp("bad") / "policy")


class Store:
    def __init__(self, root: Path):
        self.uri = absolute_sqlite(f"sqlite:///{root}/mlflow.db")
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment = self.client.create_experiment("e", artifact_location=(root / "artifacts").as_uri())

    def finished_run(self, **params) -> str:
        run_id = self.client.create_run(self.experiment).info.run_id
        for key, value in params.items():
            self.client.log_param(run_id, key, value)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def promote(self, policy_dir: Path, test_frame, trial: int, run_id: str | None = None, **kwargs):
        tags = {"study": "tiny", "trial_number": str(trial), "data_fingerprint": "f00d"}
        return promote_policy(run_id=run_id or self.finished_run(), policy_dir=policy_dir, test_frame=test_frame,
                              registered_name="ctr", tags=tags, client=self.client, **kwargs)

    def champion(self) -> int:
        return int(self.client.get_model_version_by_alias("ctr", "champion").version)


@pytest.fixture()
def store(tmp_path) -> Store:
    return Store(tmp_path)


@pytest.fixture()
def replaced(store, good_dir, bad_dir, test_frame):
    """'ctr': v1 (the weak policy) the first champion, then v2 (the trained one) replacing it."""
    first = store.promote(bad_dir, test_frame, trial=0)
    second = store.promote(good_dir, test_frame, trial=3)
    assert (first.version, second.version, second.alias) == (1, 2, "champion")
    return first, second


def test_history_after_first_champion_replacement_and_rollback(store, replaced):
    first, second = replaced
    result = run("rollback", "ctr", "--tracking-uri", store.uri)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (f"rolled back ctr: champion v2 -> v1 (test AUC {second.test_auc:.4f} -> "
                                     f"{first.test_auc:.4f}); recorded in 'deepfm history ctr'")
    assert store.champion() == 1

    events = read_history(store.client, "ctr")
    assert [(e.action, e.from_version, e.to_version) for e in events] == [
        ("rollback", 2, 1), ("replaced", 1, 2), ("first_champion", None, 1)]
    assert events[1].from_test_auc == pytest.approx(first.test_auc, abs=1e-6)
    assert events[1].to_test_auc == pytest.approx(second.test_auc, abs=1e-6)
    assert all(e.study == "tiny" and e.alias == "champion" and "@" in e.by for e in events)
    assert events[1].reason == second.reason and "significantly better" in events[1].reason
    assert events[0].time > events[1].time > events[2].time

    table = run("history", "ctr", "--tracking-uri", store.uri)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0] == "alias moves of 'ctr', newest first"
    assert lines[1].split() == ["when", "(UTC)", "event", "versions", "test", "AUC", "study"]
    assert "rollback" in lines[2] and "v2 -> v1" in lines[2] and "tiny" in lines[2]
    assert "replaced" in lines[4] and "first_champion" in lines[6] and "- -> v1" in lines[6]
    assert lines[3].strip().startswith("@champion, by ") and "rolled back from version 2" in lines[3]
    assert all(len(line) <= 80 for line in lines[:7:2])  # the event lines fit an 80-column terminal
    as_json = json.loads(run("history", "ctr", "--json", "--tracking-uri", store.uri).output)
    assert [AliasEvent(**e) for e in as_json] == events


def test_kept_challenger_and_forced_moves_are_recorded(store, good_dir, bad_dir, test_frame):
    store.promote(good_dir, test_frame, trial=0)
    kept = store.promote(bad_dir, test_frame, trial=1)
    forced = store.promote(bad_dir, test_frame, trial=1, run_id=store.client.get_model_version("ctr", "2").run_id,
                           force=True)  # the same checkpoint: v2 again, forced to champion
    assert (kept.alias, forced.version, forced.registered) == ("challenger", 2, False)
    events = read_history(store.client, "ctr")
    assert [(e.action, e.alias, e.from_version, e.to_version) for e in events] == [
        ("forced", "champion", 1, 2), ("kept_challenger", "challenger", None, 2),
        ("first_champion", "champion", None, 1)]
    assert store.client.get_model_version("ctr", "2").aliases == ["champion"]  # no longer the challenger too


def test_rollback_refuses_a_version_whose_files_fail_their_checksums(store, replaced):
    truncate(stored_policy_dir(store.client, "ctr", 1) / "weights.pt")
    result = run("rollback", "ctr", "--tracking-uri", store.uri)
    assert_one_line_error(result, "refusing to make version 1 of 'ctr' the champion", "weights.pt is corrupt",
                          "deepfm rollback ctr --to VERSION")
    assert store.champion() == 2
    assert len(read_history(store.client, "ctr")) == 2  # nothing moved, nothing recorded


def test_rollback_with_nothing_earlier_is_one_line_and_to_names_a_version(store, good_dir, bad_dir, test_frame):
    store.promote(good_dir, test_frame, trial=0)
    assert_one_line_error(run("rollback", "ctr", "--tracking-uri", store.uri),
                          "'ctr' has no earlier champion in its history", "pass --to VERSION")
    assert_one_line_error(run("rollback", "ctr", "--to", "7", "--tracking-uri", store.uri), "has no version 7")
    assert_one_line_error(run("rollback", "ctx", "--tracking-uri", store.uri), "no registered model 'ctx'",
                          "did you mean 'ctr'")
    same = run("rollback", "ctr", "--to", "1", "--tracking-uri", store.uri)
    assert same.output.strip() == "ctr: version 1 already is the champion; nothing moved"


def _event(action: str, before: int | None, after: int) -> AliasEvent:
    return AliasEvent("t", action, "champion", before, after, None, None, "s", "", "u@h")


def test_the_previous_champion_walks_back_through_rollbacks():
    promoted = [_event("first_champion", None, 1), _event("replaced", 1, 2), _event("replaced", 2, 3)]
    newest_first = promoted[::-1]
    assert previous_champion(newest_first, 3) == 2
    once = [_event("rollback", 3, 2), *newest_first]
    assert previous_champion(once, 2) == 1  # two rollbacks go two steps back, not back and forth
    assert previous_champion([_event("rollback", 2, 1), *once], 1) is None
    assert previous_champion([_event("replaced", 7, 8)], 8) == 7  # a champion from before the history began
    assert previous_champion(newest_first, 9) is None  # moved by hand, outside the history


def test_diff_shows_scores_data_origin_and_config_differences(store, replaced):
    result = run("diff", "ctr@1", "ctr@champion", "--tracking-uri", store.uri)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["ctr", "v1", "ctr", "v2", "(@champion)"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["study"] == ["tiny", "tiny"] and rows["trial"] == ["0", "3", "differs"]
    assert rows["data"] == ["fingerprint", "f00d", "f00d"]
    first, second = replaced
    a, b = f"{first.test_auc:.6f}", f"{second.test_auc:.6f}"
    assert rows["test_auc"] == [a, b, f"{float(b) - float(a):+.4f}"]
    assert "V1 config and training: 1 difference" in lines
    assert lines[-1].split() == ["embedding_dim", "8", "4"]


def test_diff_names_training_differences_from_the_source_runs(store, good_dir, test_frame):
    store.promote(good_dir, test_frame, trial=0, run_id=store.finished_run(**{"training.batch_size": 256}))
    store.promote(good_dir, test_frame, trial=1, run_id=store.finished_run(**{"training.batch_size": 512}))
    result = run("diff", "ctr/1", "ctr/2", "--tracking-uri", store.uri)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2:] == ["V1 config and training: 1 difference",
                                              "  training.batch_size  256  512"]


def _promote_at_once(uri: str, run_id: str, policy_dir: str, frame, barrier, results) -> None:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    barrier.wait()
    result = promote_policy(run_id=run_id, policy_dir=policy_dir, test_frame=frame, registered_name="ctr",
                            tags={"study": "tiny", "trial_number": "5"}, client=client)
    results.put((result.version, result.alias))


@pytest.mark.slow
def test_two_promotions_at_the_same_moment_leave_one_champion_and_a_complete_history(store, good_dir, bad_dir,
                                                                                     test_frame):
    store.promote(bad_dir, test_frame, trial=0)  # v1: the champion both candidates beat
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no MLflow engine shared across a fork
    barrier, results = ctx.Barrier(2), ctx.Queue()
    runs = [store.finished_run(), store.finished_run()]  # two checkpoints (two runs) of the same policy
    with killed_at_exit([ctx.Process(target=_promote_at_once, args=(
            store.uri, run_id, str(good_dir), test_frame, barrier, results)) for run_id in runs]) as processes:
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=240)
        assert [p.exitcode for p in processes] == [0, 0]
    outcomes = sorted(results.get(timeout=5) for _ in range(2))
    assert outcomes == [(2, "champion"), (3, "champion")]
    events = read_history(store.client, "ctr")
    assert [e.action for e in events] == ["replaced", "replaced", "first_champion"]
    assert events[0].to_version == store.champion()  # the newest event names the champion there is
    for newer, older in itertools.pairwise(events):  # each move starts where the one before it ended
        assert newer.from_version == older.to_version
    assert [m.name for m in store.client.search_registered_models()] == ["ctr"]  # no lock left behind
