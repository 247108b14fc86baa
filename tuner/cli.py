"""The `deepfm` command line: thin click commands over the library; bad input -> one line, exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from model.errors import UserInputError

from .env import quiet_defaults

quiet_defaults()


class InputError(click.ClickException):
    """Shown as 'Error: <one line>' with exit code 2, no traceback."""

    exit_code = 2


class DeepfmGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserInputError as exc:
            raise InputError(str(exc)) from None


@click.group(cls=DeepfmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deepfm-tuner")
def main() -> None:
    """Tune, track, promote and serve DeepFM click-through-rate scoring policies."""


# -- shared options --------------------------------------------------------------------------------
def data_options(func):
    """--data/--test/--format/--label/--synthetic: where rows come from."""
    func = click.option("--synthetic", type=click.IntRange(min=100), default=None,
                        help="Generate this many Criteo-format synthetic rows instead of reading --data.")(func)
    func = click.option("--label", default=None, help="Label column (default 'label'; Criteo preset: 'label').")(func)
    func = click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "parquet", "criteo"]), default=None,
                        help="File format (default: from the extension).")(func)
    func = click.option("--test", "test_path", type=click.Path(dir_okay=False), default=None,
                        help="Held-out test file (default: split 10% off --data).")(func)
    func = click.option("--data", "data_path", type=click.Path(dir_okay=False), default=None,
                        help="Training data file (CSV, TSV, Parquet, or Criteo TSV with --format criteo).")(func)
    return func


def data_spec_from_options(data_path, test_path, fmt, label, synthetic):
    from model.datasource import DataSpec

    if (data_path is None) == (synthetic is None):
        raise UserInputError("give either --data FILE or --synthetic ROWS")
    schema = {"label": label} if label else {}
    if synthetic is not None:
        return DataSpec(synthetic={"rows": synthetic}, schema=schema)
    return DataSpec(train=data_path, test=test_path, format=fmt, schema=schema)


# -- data ------------------------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Data utilities."""


@data.command("synth")
@click.option("--rows", type=click.IntRange(min=100), default=100_000, show_default=True, help="Rows to generate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-cardinality", type=click.IntRange(min=4), default=100_000, show_default=True,
              help="Distinct tokens in the widest categorical field.")
@click.option("--test-fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.1,
              show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="data/generated/synth", show_default=True)
def data_synth(rows, seed, max_cardinality, test_fraction, out) -> None:
    """Generate Criteo-format data with a known click probability.

    Writes OUT/train.tsv, OUT/test.tsv and OUT/truth.json (the Bayes-optimal test AUC/logloss).

    Example: deepfm data synth --rows 1000000 --out data/generated/1m
    """
    from model.synth import SynthSpec, write_dataset

    from .console import out as console

    truth = write_dataset(SynthSpec(rows=rows, seed=seed, max_cardinality=max_cardinality), out, test_fraction)
    console.print(f"wrote {truth['train_rows']:,} train + {truth['test_rows']:,} test rows to {out}/ "
                  f"(click rate {truth['click_rate']:.3f}; best achievable test AUC {truth['test_bayes_auc']:.4f}, "
                  f"logloss {truth['test_bayes_logloss']:.4f})")


# -- train / evaluate ------------------------------------------------------------------------------
@main.command()
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), required=True,
              help="V1 policy YAML (policy_configs.scoring_policy, optional training: block).")
@data_options
@click.option("--out", type=click.Path(file_okay=False), default="outputs/policy", show_default=True,
              help="Directory for the trained policy.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override training.max_epochs.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Override training.device.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: torch's).")
def train(policy_path, data_path, test_path, fmt, label, synthetic, out, epochs, device, threads) -> None:
    """Train one DeepFM scoring policy and save it as a self-contained directory.

    Example: deepfm train --policy studies/policy.yaml --data data/generated/synth/train.tsv --format criteo
    """
    from model.config import read_policy_yaml
    from model.dataset import prepare
    from model.policy import ScoringPolicy
    from model.train import evaluate, train as train_model

    from .console import err, out as console
    from .progress import EpochProgress

    policy, control = read_policy_yaml(policy_path)
    overrides = {k: v for k, v in {"max_epochs": epochs, "device": device, "threads": threads}.items() if v}
    control = control.replace(**overrides)
    spec = data_spec_from_options(data_path, test_path, fmt, label, synthetic)
    frame, schema, split = spec.load()
    prepared = prepare(frame, schema, split, source=str(data_path or "synthetic data"))
    del frame
    err.print(f"data: {prepared.summary()}")
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
    console.print(f"{result.stop_reason}; best epoch {result.best_epoch}: val AUC {result.best.val_auc:.4f}, "
                  f"test AUC {test_auc:.4f}, test logloss {test_logloss:.4f}")
    console.print(f"saved policy to {out}/")


@main.command()
@click.option("--model", "model_dir", type=click.Path(file_okay=False), required=True,
              help="A policy directory from 'deepfm train' or 'deepfm pull'.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), required=True, help="Labelled data to score.")
@click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "parquet", "criteo"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(model_dir, data_path, fmt, as_json) -> None:
    """AUC and logloss of a saved policy on a labelled file.

    Example: deepfm evaluate --model outputs/policy --data data/generated/synth/test.tsv --format criteo
    """
    from model.data import check_labels, read_table
    from model.policy import ScoringPolicy
    from model.train import classification_metrics

    from .console import out as console

    policy = ScoringPolicy.load(model_dir)
    frame = read_table(data_path, fmt)
    labels = check_labels(frame, policy.encoder.schema.label, str(data_path))
    auc, logloss = classification_metrics(labels, policy.predict(frame))
    result = {"rows": len(frame), "auc": auc, "logloss": logloss, "click_rate": float(labels.mean())}
    console.print(json.dumps(result) if as_json else
                  f"{len(frame):,} rows: AUC {auc:.4f}, logloss {logloss:.4f} (click rate {labels.mean():.3f})")


def run() -> None:  # pragma: no cover - console-script shim
    main(prog_name="deepfm")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
