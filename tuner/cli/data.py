"""`deepfm data synth` and `deepfm data prepare`: synthetic data with a known best AUC, and a study's data encoded
once into its on-disk dataset."""

from __future__ import annotations

import click

from deepfm_tuner.model.errors import UserInputError
from deepfm_tuner.tuner.cli.console import out as console
from deepfm_tuner.tuner.cli.options import load_spec, log_to_stderr
from deepfm_tuner.tuner.stores.disks import check_writable


@click.group()
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
@click.option("--force", is_flag=True, help="Regenerate even if OUT already holds a data set.")
def data_synth(rows, seed, max_cardinality, test_fraction, out, force) -> None:
    """Generate Criteo-format data with a known click probability.

    Writes OUT/train.tsv, OUT/test.tsv and OUT/truth.json (the Bayes-optimal test AUC/logloss), in chunks
    (memory does not grow with --rows) and atomically; an OUT that already holds this data set is reused.

    Example: deepfm data synth --rows 1000000 --out data/generated/1m
    """
    from deepfm_tuner.model.data.synth import SynthSpec, differences, read_truth, write_dataset

    check_writable(out, "pass --out with a directory on a writable disk")
    spec = SynthSpec(rows=rows, seed=seed, max_cardinality=max_cardinality)
    truth = None if force else read_truth(out)
    if truth is not None and (diffs := differences(truth, spec, test_fraction)):
        raise UserInputError(f"{out} already holds a different synthetic data set ({'; '.join(diffs)}); "
                             f"choose another --out or pass --force to regenerate it")
    reused = truth is not None
    if not reused:
        truth = write_dataset(spec, out, test_fraction, overwrite=force)
    rows_text = f"{truth['train_rows']:,} train + {truth['test_rows']:,} test rows"
    done = f"reusing the {rows_text} in" if reused else f"wrote {rows_text} to"
    console.print(f"{done} {out}/ "
                  f"(click rate {truth['click_rate']:.3f}; best achievable test AUC {truth['test_bayes_auc']:.4f}, "
                  f"logloss {truth['test_bayes_logloss']:.4f})")


@data.command("prepare")
@click.argument("study_path", metavar="STUDY.yaml", type=click.Path(dir_okay=False))
def data_prepare(study_path) -> None:
    """Encode the study's data once into its on-disk dataset (data.encoded_dir) and print its folder.

    tune, train and promote build it on first use too; every later run, worker and study on the same files
    maps it instead of reading and encoding them again. Example: deepfm data prepare studies/criteo.yaml
    """
    prepared = load_spec(study_path).data.prepare(log_to_stderr)
    click.echo(f"data: {prepared.summary()}", err=True)
    click.echo(str(prepared.folder))
