"""Every name a study writes for later readers: Optuna trial and study user attributes, and MLflow tags. One home,
so the writer (objective, runner, records) and the readers (status, promotion, recovery) cannot drift apart."""

# -- Optuna trial user attributes ------------------------------------------------------------------------------
ATTR_RUN_ID = "mlflow_run_id"  # the trial's MLflow run
ATTR_CHECKPOINT = "checkpoint"  # runs:/ID/checkpoint of a trial that was best when it ended
ATTR_RETRY_OF = "retry_of_run_id"  # the dead trial's run a retry replaces
ATTR_SKIPPED = "skipped"  # a trial claimed after the total was reached: failed without running
ATTR_WORKER = "worker"  # host:pid of the process that ran the trial (team mode: which machine to look at)
ATTR_TRAINING = "training"  # {seconds: epochs only, wall_seconds: build + epochs + evaluation, best_epoch, samples:
#   training rows processed; pruned: score, pruned_at_epoch, or with eval_every pruned_at_step and epochs_trained}
ATTR_BASELINE, ATTR_BASELINE_NOTE = "baseline", "baseline_adjusted"  # the V1 baseline trial (tuner.baseline)
ATTR_WARM_START = "warm_start_from"  # "STUDY#TRIAL" of an earlier study's configuration (tuner.warmstart)
ATTR_TRAINED, ATTR_FAILURE = "trained", "failure"  # the exact config trained; why it failed (tuner.records)

# -- Optuna study user attributes ------------------------------------------------------------------------------
ATTR_PARENT_RUN, ATTR_EXPERIMENT, ATTR_TRACKING_URI = "mlflow_parent_run_id", "mlflow_experiment_id", "mlflow_tracking_uri"
ATTR_FINALISTS = "finalists"  # the finalists' retrains, per-candidate mean/std and the choice (tuner.finalists)

# -- MLflow tags -------------------------------------------------------------------------------------------------
TAG_STUDY, TAG_ROLE, TAG_TRIAL = "deepfm.study", "deepfm.role", "deepfm.trial_number"
TAG_FAILURE, TAG_STATE = "deepfm.failure_reason", "deepfm.trial_state"
TAG_PRUNED_AT = "deepfm.pruned_at_epoch"  # 0-based step of the epoch after which the trial was pruned
TAG_PRUNED_AT_STEP = "deepfm.pruned_at_step"  # with training.eval_every: the 0-based report step it was pruned at
# a finalist retrain's run (role "finalist"): the trial whose configuration it repeats, that trial's run, its seed
TAG_FINALIST_OF_TRIAL, TAG_FINALIST_OF_RUN = "deepfm.finalist_of_trial", "deepfm.finalist_of_run_id"
TAG_FINALIST_SEED = "deepfm.finalist_seed"
TAG_FINALISTS_CHOSEN = "deepfm.finalists.chosen_trial"  # on the parent run: the trial whose configuration won
