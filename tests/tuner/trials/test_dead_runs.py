"""Issue 18 item 8: a finalist retrain whose process died (kill -9) left its MLflow run RUNNING for ever; the next
`deepfm tune` / `deepfm promote` on the study closes it FAILED with the reason, as dead trials are."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from deepfm_tuner.tuner.pipeline.handle import existing_handle
from deepfm_tuner.tuner.pipeline.tune import tune
from deepfm_tuner.tuner.spec.study import load_study
from deepfm_tuner.tuner.stores.locations import resolve_stores

STUDY = {
    "study": {"name": "dead", "n_trials": 2, "sampler": {"type": "random", "seed": 3}, "pruner": {"type": "none"},
              "promote": False, "finalists": {"top_k": 1, "seeds": 1}},
    "data": {"synthetic": {"rows": 1000, "seed": 1, "max_cardinality": 100}},
    "training": {"batch_size": 256, "max_epochs": 1, "seed": 0, "device": "cpu", "threads": 1},
    "policy_configs": {"scoring_policy": {"embedding_dim": 4, "deep_hidden_units": [8], "dropout": 0.0}},
}


def test_a_finalist_run_left_running_by_a_dead_process_is_closed_failed_by_the_next_tune(in_tmp, study_file):
    path = study_file(STUDY)
    spec = load_study(path)
    tune(spec)
    handle = existing_handle(spec, resolve_stores(spec=spec), str(path))
    # what `kill -9` during a retrain leaves: a finalist run that never ended
    orphan = handle.tracker.start_child_run(handle.parent_run_id, "finalist-0-seed-9", "finalist", {}, {})
    client = MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")
    assert client.get_run(orphan).info.status == "RUNNING"

    tune(load_study(path))  # the resume: no trial left to run; the finalists step finds the dead run

    run = client.get_run(orphan)
    assert run.info.status == "FAILED"
    assert "process died" in run.data.tags["deepfm.failure_reason"]
    assert run.data.tags["deepfm.trial_state"] == "FAIL"
    experiment = client.get_experiment_by_name("deepfm-dead").experiment_id
    assert not client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'")
