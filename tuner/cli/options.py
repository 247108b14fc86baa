"""Options shared by several commands, defined once: where the stores are and where rows come from; and the two
steps every study command starts with (read the study file, resolve its stores)."""

from __future__ import annotations

import click

from deepfm_tuner.model.config import load_yaml
from deepfm_tuner.model.errors import ConfigError, UserInputError
from deepfm_tuner.tuner.stores.locations import (
    DEFAULT_OPTUNA_STORAGE,
    DEFAULT_TRACKING_URI,
    ENV_MLFLOW_TRACKING_URI,
    ENV_STORAGE,
    ENV_TRACKING_URI,
)


def storage_option(func):
    return click.option(
        "--storage", default=None, envvar=ENV_STORAGE, show_envvar=True, metavar="URL",
        help=f"Optuna storage URL (default: study file's study.storage, else {DEFAULT_OPTUNA_STORAGE}).")(func)


def tracking_uri_option(func):
    return click.option(
        "--tracking-uri", default=None, envvar=ENV_TRACKING_URI, show_envvar=True, metavar="URI",
        help=f"MLflow tracking/registry URI (default: study file's study.tracking_uri, else ${ENV_MLFLOW_TRACKING_URI}, "
             f"else {DEFAULT_TRACKING_URI}).")(func)


def store_options(func):
    """--storage / --tracking-uri: where the Optuna study and the MLflow runs live."""
    return storage_option(tracking_uri_option(func))


def load_spec(study_path: str, **overrides):
    """The study file as a validated StudySpec, with the command line's overrides applied."""
    from deepfm_tuner.tuner.spec.study import load_study  # the spec room imports Optuna for its samplers

    return load_study(study_path).with_overrides(**overrides)


# -- shared options --------------------------------------------------------------------------------
def data_options(func):
    """--data/--valid/--test/--format/--label/--schema/--synthetic: where rows come from and what they mean."""
    func = click.option("--schema", "schema_path", type=click.Path(dir_okay=False), default=None,
                        help="YAML of column roles, as a study's data.schema: label, categorical, numeric, "
                             "multivalued, ignore, ... (default: inferred from the data).")(func)
    func = click.option("--synthetic", type=click.IntRange(min=100), default=None,
                        help="Generate this many Criteo-format synthetic rows instead of reading --data.")(func)
    func = click.option("--label", default=None, help="Label column (default 'label'; Criteo preset: 'label').")(func)
    func = click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "parquet", "criteo"]), default=None,
                        help="File format (default: from the extension).")(func)
    func = click.option("--test", "test_path", type=click.Path(dir_okay=False), default=None,
                        help="Held-out test file (default: split 10% off --data).")(func)
    func = click.option("--valid", "valid_path", type=click.Path(dir_okay=False), default=None,
                        help="Fixed validation file (default: split 10% off --data).")(func)
    func = click.option("--data", "data_path", type=click.Path(dir_okay=False), default=None,
                        help="Training data file (CSV, TSV, Parquet, or Criteo TSV with --format criteo).")(func)
    return func


def read_schema_file(path: str) -> dict:
    """A --schema file: the mapping a study gives as `data.schema` (or a file with that mapping under `schema:`)."""
    document = load_yaml(path)
    if isinstance(document, dict) and set(document) == {"schema"}:
        document = document["schema"]
    if not isinstance(document, dict) or not document:
        raise UserInputError(f"--schema {path}: expected a mapping of column roles such as "
                             f"'label: click' and 'categorical: [site, ad]'")
    return document


def data_spec_from_options(data_path, valid_path, test_path, fmt, label, synthetic, schema_path=None):
    from deepfm_tuner.model.data.source import DataSpec  # the data room: imported by the commands that read data

    if (data_path is None) == (synthetic is None):
        raise UserInputError("give either --data FILE or --synthetic ROWS")
    if schema_path and synthetic is not None:
        raise UserInputError("--schema describes files given with --data; synthetic data has its own schema")
    schema = read_schema_file(schema_path) if schema_path else {}
    if label:
        schema["label"] = label  # --label wins over the file's label
    if schema_path:
        try:
            return DataSpec(train=data_path, valid=valid_path, test=test_path, format=fmt, schema=schema)
        except ConfigError as exc:
            raise UserInputError(f"--schema {schema_path}: {str(exc).removeprefix('data.schema: ')}") from None
    if synthetic is not None:
        return DataSpec(synthetic={"rows": synthetic}, valid=valid_path, schema=schema)
    return DataSpec(train=data_path, valid=valid_path, test=test_path, format=fmt, schema=schema)


def log_to_stderr(message: str) -> None:
    click.echo(message, err=True)
