"""The scoring policy as an MLflow pyfunc model: rebuilt from the policy directory, scores raw DataFrames.

The logged model holds the policy directory (V1 YAML, encoder JSON, state dict, metrics) as the artifact
"policy" and carries `deepfm_tuner/model` and `deepfm_tuner/tuner/serving` as code (this class is pickled by
reference to `deepfm_tuner.tuner.serving.pyfunc`), so `mlflow.pyfunc.load_model` and `mlflow models serve` need
nothing from this repository beyond its pip requirements.

Signature: one column per feature of the policy's schema; categorical and multi-valued columns are `string`,
numeric columns are `double`. Nulls are allowed in every column (missing value -> the field's "missing"
embedding), extra columns are ignored, unseen tokens go to the field's out-of-vocabulary index. Every feature is
needed, but the signature marks them optional so that MLflow does not refuse a missing one with a 1.6 KB message
that echoes the request and the whole schema: `predict` refuses it with a short `MissingColumns` error that names
the missing columns first (HTTP 400 from `mlflow models serve`). The served JSON is parsed to these types by the
server; Python callers with other dtypes (nullable Int64 counts, Arrow strings, integer categories) pass the frame
through `conform` first, as `serving.scoring.predict_frame` does. Output: one `probability` (double) per row.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, DataType, Schema

import deepfm_tuner.model as model_package
from deepfm_tuner.model.data.frames import as_arrow, dictionary_array, used_categories
from deepfm_tuner.model.data.schema import FeatureSchema
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.parallel import map_columns
from deepfm_tuner.model.policy import POLICY_FILE, ScoringPolicy

ARTIFACT_KEY = "policy"
OUTPUT_COLUMN = "probability"
# Pinned loosely to what the policy needs at load time (psutil: the model's memory check before it allocates);
# the project itself travels as code (code_paths).
PIP_REQUIREMENTS = ["torch", "numpy", "pandas", "pyarrow", "scikit-learn", "pyyaml", "psutil", "pydantic>=2.7",
                    f"mlflow=={mlflow.__version__}"]


class ScoringPolicyModel(mlflow.pyfunc.PythonModel):
    """`load_context` rebuilds the ScoringPolicy from its directory and warms it up; `predict` scores a raw
    DataFrame."""

    def load_context(self, context) -> None:
        self.policy = ScoringPolicy.load(context.artifacts[ARTIFACT_KEY])
        self.policy.warm_up()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        frame = _as_frame(model_input)
        features = self.policy.encoder.schema.features
        missing = [c for c in features if c not in frame.columns]
        if missing:
            raise MissingColumns(missing, len(features))
        probabilities = self.policy.predict(frame).astype(np.float64)
        return pd.Series(probabilities, index=frame.index, name=OUTPUT_COLUMN)


class MissingColumns(MlflowException):
    """A request without some feature columns: 'missing input column(s) C7, I2; ...' (HTTP 400).

    The scoring server rewrites an MlflowException's message to 'Failed to predict data <the whole request>...
    Error: <message>'; this message ignores that rewrite, so a client reads the missing columns first."""

    def __init__(self, missing: list[str], n_features: int):
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        super().__init__(f"missing input column(s) {shown}; send all {n_features} feature columns of the model's "
                         f"signature (null where a value is unknown)", error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):  # set once, by __init__
            self._message = value


def _as_frame(model_input: Any) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, (dict, list)):
        return pd.DataFrame(model_input)
    raise DataError(f"the scoring model takes a pandas DataFrame of raw feature columns, got "
                    f"{type(model_input).__name__}; build one with pandas.DataFrame(rows)")


# -- signature -------------------------------------------------------------------------------------
def policy_signature(schema: FeatureSchema) -> ModelSignature:
    """`string` categorical/multi-valued and `double` numeric columns (nulls allowed); `probability`. Marked
    optional for MLflow: `predict` itself refuses a missing one, with a short message (see `MissingColumns`)."""
    inputs = [ColSpec(DataType.string, c, required=False) for c in schema.categorical + schema.multivalued]
    inputs += [ColSpec(DataType.double, c, required=False) for c in schema.numeric]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec(DataType.double, OUTPUT_COLUMN)]))


def conform(frame: pd.DataFrame, input_schema: Schema | None) -> pd.DataFrame:
    """The signature's columns of `frame`, cast cheaply to its types; extra columns dropped, missing ones kept
    missing (MLflow then names them). Numbers in a string column become the tokens the encoder makes of them
    (3, 3.0 -> "3"); Arrow strings stay Arrow-backed, so nothing is converted to Python objects."""
    if input_schema is None or not input_schema.has_input_names():
        return frame
    specs = [spec for spec in input_schema.inputs if spec.name in frame.columns]

    def cast(spec) -> pd.Series:
        series = frame[spec.name]
        if spec.type == DataType.double:
            return _as_double(series)
        if spec.type == DataType.string:
            return _as_string(series)
        return series

    columns = map_columns(cast, specs, len(frame))  # decoding is Arrow work: one column per core
    return pd.DataFrame(dict(zip([spec.name for spec in specs], columns)), index=frame.index)


def _as_double(series: pd.Series) -> pd.Series:
    if series.dtype == np.float64:
        return series
    if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        return series.astype(np.float64)
    return series  # strings or objects: MLflow's type check (or the encoder) names the bad column


def _as_string(series: pd.Series) -> pd.Series:
    dtype = series.dtype
    if isinstance(dtype, pd.StringDtype) or dtype == object:
        return series
    if isinstance(dtype, pd.CategoricalDtype) and pd.api.types.is_string_dtype(dtype.categories.dtype):
        # e.g. Criteo tokens read dictionary-encoded: decode in Arrow (MLflow's check wants string columns)
        codes, categories = used_categories(series)
        decoded = dictionary_array(codes, as_arrow(categories)).dictionary_decode().cast(pa.string())
        return pd.Series(pd.arrays.ArrowStringArray(decoded), index=series.index, name=series.name)
    if isinstance(dtype, pd.ArrowDtype) and (pa.types.is_string(dtype.pyarrow_dtype)
                                             or pa.types.is_large_string(dtype.pyarrow_dtype)):
        return series.astype(pd.StringDtype("pyarrow"))
    if pd.api.types.is_float_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.isfinite(values)
        if np.array_equal(values[finite], np.round(values[finite])):
            series = pd.Series(pd.array(np.where(finite, values, 0).astype(np.int64), dtype="Int64"),
                               index=series.index, name=series.name).mask(~finite)
    return series.astype(pd.StringDtype("pyarrow"))


# -- logging ---------------------------------------------------------------------------------------
def log_policy_model(policy_dir: str | Path, *, input_example: pd.DataFrame, name: str = "scoring_policy",
                     step: int = 0):
    """Log the policy directory as a pyfunc model into the active run; returns MLflow's ModelInfo.

    `input_example` is a few raw rows (as in the training file); it is stored with the model (conformed to the
    signature) and MLflow checks that the logged model scores it. MLflow copies the run's metrics of `step` onto
    the logged model: pass the policy's best epoch, not the default 0 (epoch 1's values are not the model's).
    """
    policy_dir = Path(policy_dir)
    if not (policy_dir / POLICY_FILE).is_file():
        raise DataError(f"{policy_dir} is not a scoring-policy directory (no {POLICY_FILE}); "
                        f"point at the output of 'deepfm train'")
    policy = ScoringPolicy.load(policy_dir)
    signature = policy_signature(policy.encoder.schema)
    example = conform(input_example.head(5), signature.inputs)
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_logger.level
    pyfunc_logger.setLevel(logging.ERROR)  # its CloudPickle notice: the pickle holds only a class reference
    try:
        return _log(policy_dir, signature, example, name, step)
    finally:
        pyfunc_logger.setLevel(level)


def serving_code(folder: Path) -> Path:
    """The code a registered model ships, laid out as the installed package: `deepfm_tuner/model` and
    `deepfm_tuner/tuner/serving` (with the tuner package's light `__init__`), nothing that imports Optuna, click or
    the study pipeline. MLflow puts the folder on sys.path when it loads the model."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    root = folder / "deepfm_tuner"
    shutil.copytree(Path(model_package.__file__).parent, root / "model", ignore=ignore)
    serving = Path(__file__).parent
    shutil.copytree(serving, root / "tuner" / serving.name, ignore=ignore)
    shutil.copyfile(serving.parent / "__init__.py", root / "tuner" / "__init__.py")
    return root


def _log(policy_dir: Path, signature: ModelSignature, example: pd.DataFrame, name: str, step: int = 0):
    with tempfile.TemporaryDirectory(prefix="deepfm-code-") as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            step=step,
            python_model=ScoringPolicyModel(),
            artifacts={ARTIFACT_KEY: str(policy_dir)},
            code_paths=[str(serving_code(Path(tmp)))],
            signature=signature,
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
        )
