"""`deepfm train` and `deepfm evaluate`: one policy trained from a V1 config (no study), and a saved policy scored
on a labelled file."""

from __future__ import annotations

import json

import click

from deepfm_tuner.model.config import read_policy_yaml
from deepfm_tuner.tuner.cli.console import err
from deepfm_tuner.tuner.cli.console import out as console
from deepfm_tuner.tuner.cli.options import data_options, data_spec_from_options, log_to_stderr
from deepfm_tuner.tuner.stores.disks import check_writable


@click.command()
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), required=True,
              help="V1 policy YAML (policy_configs.scoring_policy, optional training: block).")
@data_options
@click.option("--out", type=click.Path(file_okay=False), default="outputs/policy", show_default=True,
              help="Directory for the trained policy.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override training.max_epochs.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Override training.device.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: torch's).")
def train(policy_path, data_path, valid_path, test_path, fmt, label, synthetic, schema_path, out, epochs, device,
          threads) -> None:
    """Train one DeepFM scoring policy and save it as a self-contained directory.

    Example: deepfm train --policy studies/policy.yaml --data data/generated/synth/train.tsv --format criteo
    """
    # torch: imported by the commands that train or score, not by --help
    from deepfm_tuner.model.policy import ScoringPolicy
    from deepfm_tuner.model.train import evaluate, placement, resolve_device
    from deepfm_tuner.model.train import train as train_model
    from deepfm_tuner.tuner.cli.progress import EpochProgress
    from deepfm_tuner.tuner.trials.record import human_epoch

    check_writable(out, "pass --out with a directory on a writable disk")
    policy, control = read_policy_yaml(policy_path)
    overrides = {k: v for k, v in {"max_epochs": epochs, "device": device, "threads": threads}.items() if v}
    control = control.replace(**overrides)
    resolve_device(control.device)  # no CUDA: fail before reading any data
    spec = data_spec_from_options(data_path, valid_path, test_path, fmt, label, synthetic, schema_path)
    prepared = spec.prepare(log_to_stderr)
    placement(prepared, policy, resolve_device(control.device))  # a model too large: fail before printing anything
    err.print(f"data: {prepared.summary()}", markup=False)
    with EpochProgress(control.max_epochs, err) as progress:
        result = train_model(prepared, policy, control, on_epoch=progress.update)
    test_auc, test_logloss = evaluate(result.model, prepared.test) if len(prepared.test) else (float("nan"),) * 2
    metrics = {
        "best_epoch": result.best_epoch, "stop_reason": result.stop_reason, "train_seconds": result.train_seconds,
        "val_auc": result.best.val_auc, "val_logloss": result.best.val_logloss,
        "test_auc": test_auc, "test_logloss": test_logloss, "data_fingerprint": prepared.fingerprint,
        "history": [m.to_dict() for m in result.history],
    }
    ScoringPolicy(policy, control, prepared.encoder, result.model, metrics).save(out)
    console.print(f"{result.stop_reason}; best epoch {human_epoch(result.best_epoch)}: val AUC {result.best.val_auc:.4f}, "
                  f"test AUC {test_auc:.4f}, test logloss {test_logloss:.4f}")
    console.print(f"saved policy to {out}/")


@click.command()
@click.option("--model", "model_dir", type=click.Path(file_okay=False), required=True,
              help="A policy directory from 'deepfm train' or 'deepfm pull'.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), required=True, help="Labelled data to score.")
@click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "parquet", "criteo"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(model_dir, data_path, fmt, as_json) -> None:
    """AUC and logloss of a saved policy on a labelled file.

    Example: deepfm evaluate --model outputs/policy --data data/generated/synth/test.tsv --format criteo
    """
    from deepfm_tuner.model.policy import ScoringPolicy  # torch: imported by the commands that score

    result = ScoringPolicy.load(model_dir).evaluate_file(data_path, fmt)
    console.print(json.dumps(result) if as_json else
                  f"{result['rows']:,} rows: AUC {result['auc']:.4f}, logloss {result['logloss']:.4f} "
                  f"(click rate {result['click_rate']:.3f})")
