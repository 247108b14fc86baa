"""Every name a study writes for later readers: Optuna trial and study user attributes, MLflow tags and metric names.
One home, so the writers (objective, finalists, the study's creation) and the readers (tuner.trials.record, status,
promotion, recovery) cannot drift apart. The study and role tags of every run are the tracker's
(tuner.stores.tracking: TAG_STUDY, TAG_ROLE)."""

from __future__ import annotations

from deepfm_tuner.model.config import TrainConfig

# -- Optuna trial user attributes ------------------------------------------------------------------------------
ATTR_RUN_ID = "mlflow_run_id"  # the trial's MLflow run
ATTR_CHECKPOINT = "checkpoint"  # runs:/ID/checkpoint of a trial that was best when it ended
ATTR_RETRY_OF = "retry_of_run_id"  # the dead trial's run a retry replaces
ATTR_SKIPPED = "skipped"  # a trial claimed after the total was reached: failed without running
ATTR_WORKER = "worker"  # host:pid of the process that ran the trial (team mode: which machine to look at)
ATTR_DEVICE, ATTR_OPTIMIZER = "device", "optimizer"  # where and how it trained (model.train.training_setup)
ATTR_TRAINING = "training"  # {seconds: epochs only, wall_seconds: build + epochs + evaluation, best_epoch, samples:
#   training rows processed; pruned: score, pruned_at_epoch, or with eval_every pruned_at_step and epochs_trained}
ATTR_BASELINE, ATTR_BASELINE_NOTE = "baseline", "baseline_adjusted"  # the V1 baseline trial (tuner.trials.baseline)
ATTR_WARM_START = "warm_start_from"  # "STUDY#TRIAL" of an earlier study's configuration (tuner.trials.warmstart)
ATTR_TRAINED, ATTR_FAILURE = "trained", "failure"  # the exact config trained; why it failed (tuner.trials.record)
# a trial's serving cost (tuner.trials.constraints), also its run's metrics of the same names: the parameter count
# (every trial, at its start) and with study.constraints.max_latency_ms the median ms to score 1,000 raw rows
PARAMETER_COUNT, SCORE_LATENCY_MS = "parameter_count", "score_latency_ms"

# -- Optuna study user attributes ------------------------------------------------------------------------------
ATTR_PARENT_RUN, ATTR_EXPERIMENT, ATTR_TRACKING_URI = "mlflow_parent_run_id", "mlflow_experiment_id", "mlflow_tracking_uri"
ATTR_FINALISTS = "finalists"  # the finalists' retrains, per-candidate mean/std and the choice (tuner.trials.finalists)
ATTR_BUDGET = "serving_budget"  # the study.constraints the study was created with (tuner.trials.constraints)
ATTR_REFIT = "refit"  # the chosen configuration's and the V1 baseline's refits on every row (tuner.pipeline.refit)
ATTR_REFERENCE = "reference"  # the tree-model reference's run, scores and settings (tuner.trials.reference)

# -- MLflow tags -------------------------------------------------------------------------------------------------
TAG_TRIAL = "deepfm.trial_number"
TAG_FAILURE, TAG_STATE = "deepfm.failure_reason", "deepfm.trial_state"
TAG_PRUNED_AT = "deepfm.pruned_at_epoch"  # 0-based step of the epoch after which the trial was pruned
TAG_PRUNED_AT_STEP = "deepfm.pruned_at_step"  # with training.eval_every: the 0-based report step it was pruned at
# a finalist retrain's run (role "finalist"): the trial whose configuration it repeats, that trial's run, its seed
TAG_FINALIST_OF_TRIAL, TAG_FINALIST_OF_RUN = "deepfm.finalist_of_trial", "deepfm.finalist_of_run_id"
TAG_FINALIST_SEED = "deepfm.finalist_seed"
TAG_FINALISTS_CHOSEN = "deepfm.finalists.chosen_trial"  # on the parent run: the trial whose configuration won
TAG_WITHIN_BUDGET = "deepfm.within_budget"  # with study.constraints: "true" or "false" on a complete trial's run
# a refit's run (roles "refit", "refit_baseline"): the trial whose configuration it trains on every training row,
# the run it repeats (the trial's, or the chosen finalist retrain's), its training rows and the samples it trained
TAG_REFIT_OF_TRIAL, TAG_REFIT_OF_RUN = "deepfm.refit_of_trial", "deepfm.refit_of_run_id"
TAG_REFIT_ROWS, TAG_REFIT_SAMPLES = "deepfm.refit_rows", "deepfm.refit_samples"
TAG_REFIT_RANK, TAG_REFIT_CHOSEN = "deepfm.refit_rank", "deepfm.refit_chosen"  # study.refit.candidates
TAG_REFERENCE_RUN = "deepfm.reference_run_id"  # on the parent run: the tree-model reference's run (role reference)

# -- MLflow metric names ---------------------------------------------------------------------------------------
CHECKPOINT_PATH = "checkpoint"  # the artifact folder holding a run's policy directory
EPOCH_PREFIX = "epoch_"  # per-epoch curves: epoch_val_auc, epoch_val_logloss, epoch_train_loss, ... (one per step)
PRUNED_AT_EPOCH = "pruned_at_epoch"  # metric: 0-based step the trial was pruned at (as MLflow steps)
STEP_PREFIX = "step_"  # with eval_every, curves on the validation sample at the Optuna report steps: step_val_auc,
#   step_val_logloss, step_train_loss (this epoch's rows so far), step_samples (training rows so far)
PRUNED_AT_STEP = "pruned_at_step"  # with eval_every: metric, the 0-based report step the trial was pruned at
SAMPLES_TRAINED = "samples_trained"  # metric: training rows a trial processed (complete or pruned), all epochs


def score_name(metric: str) -> str:
    """The one name of a trial's score everywhere (MLflow runs table, parent run, status, report, registry tags):
    `score_<metric>`, the study metric at the trial's best epoch (for a pruned trial: its best epoch so far)."""
    return f"score_{metric}"


def sample_score_name(metric: str) -> str:
    """A refit's run and registered version carry the score of the run it repeats (trained on the trials' rows)
    under this name beside its own `score_<metric>`."""
    return f"sample_{score_name(metric)}"


def sub_epoch(control: TrainConfig) -> bool:
    """Trials report (and are pruned) at every evaluation point on the validation sample, not every epoch:
    `training.eval_every` below 1."""
    return control.evals_per_epoch > 1


def curve_name(metric: str, control: TrainConfig) -> str:
    """The MLflow curve holding a trial's Optuna intermediate values, at the same steps: `step_<metric>` with
    eval_every below 1, else `epoch_<metric>`."""
    return f"{STEP_PREFIX if sub_epoch(control) else EPOCH_PREFIX}{metric}"
