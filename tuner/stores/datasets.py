"""The data a run trained and was scored on, as MLflow dataset inputs: what fills the runs table's Dataset column,
a run page's datasets, a logged model's "Datasets used", and lets runs be filtered by their data
(`dataset.digest = '<fingerprint>'`, `dataset.name = 'day_0:train'`, `dataset.context = 'test'`).

One dataset per part of the encoded dataset (train, val, test), each with its fingerprint as digest and named after
the source files feeding that part, so a person recognises it (the trials' sample of the training rows, with
data.tune_rows: `<files>:train-sample-<rows>-seed<seed>`, a dataset of its own); source = those files (JSON), schema = the columns
the model reads, profile = rows and clicks. Described from the manifest and the mapped arrays' lengths alone:
nothing reads the data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.validation import MAX_DATASET_SOURCE_SIZE

from deepfm_tuner.model.data.cache import manifest
from deepfm_tuner.model.data.tensors import PreparedData

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # our part -> MLflow's context word
SOURCE_TYPE = "local"  # MLflow's: the UI shows the source's `uri` as "Path: ..."
GENERIC_STEMS = {"train", "training", "val", "valid", "validation", "test", "testing", "data"}  # named by folder
COLSPEC_TYPES = {"categorical": "string", "multivalued": "string", "numeric": "double"}  # as the encoder reads them


def run_datasets(prepared: PreparedData) -> list[DatasetInput]:
    """The train, validation and test parts of `prepared`, each tagged with its context: what a training run logs
    (one `log_inputs` call)."""
    info = manifest(prepared.folder) if prepared.folder is not None else {}
    return [DatasetInput(_dataset(prepared, part, info), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
            for part, context in CONTEXTS.items()]


def part_dataset(prepared: PreparedData, part: str) -> Dataset:
    """One part alone (promotion: the test rows it scores), named and digested as the training runs log it."""
    return _dataset(prepared, part, manifest(prepared.folder) if prepared.folder is not None else {})


def _dataset(prepared: PreparedData, part: str, info: dict) -> Dataset:
    files = _files_of(part, info.get("sources", []))
    profile = {"rows": len(prepared.parts[part])}
    if part in info.get("clicks", {}):
        profile["clicks"] = int(info["clicks"][part])
    sample = prepared.sample if part == "train" and prepared.sample and not prepared.sample.whole else None
    name = f"{_label(files)}:{part}" + ("" if sample is None else f"-sample-{sample.rows}-seed{sample.seed}")
    return Dataset(name=name, digest=prepared.fingerprint, source_type=SOURCE_TYPE,
                   source=_source(files, prepared.folder), schema=_schema(info.get("schema")),
                   profile=json.dumps(profile))


def _files_of(part: str, sources: list[dict]) -> list[str]:
    """The files whose rows make up `part`: a file given for it (data.valid, data.test), else the split files."""
    own = [s["path"] for s in sources if s.get("role") == part]
    return own or [s["path"] for s in sources if s.get("role") == "split"]


def _label(files: list[str]) -> str:
    """day_0; day_0+day_1; day_0..day_6; a file named only by its part (train.tsv) gets its folder: synth/train."""
    if not files:
        return "data"
    names = [Path(f).stem if Path(f).stem.lower() not in GENERIC_STEMS else f"{Path(f).parent.name}/{Path(f).stem}"
             for f in files]
    return names[0] if len(names) == 1 else "+".join(names) if len(names) == 2 else f"{names[0]}..{names[-1]}"


def _source(files: list[str], folder: Path | None) -> str:
    """{"uri": the file (several: their folder), "files": [...], "encoded": the encoded dataset's folder}, the file
    list cut short (with a count) if it would pass MLflow's limit."""
    uri = files[0] if len(files) == 1 else os.path.commonpath(files) if files else str(folder or "")
    shown = list(files)
    while True:
        source = {"uri": uri, "files": shown, **({"more_files": len(files) - len(shown)} if len(shown) < len(files)
                                                 else {}), **({"encoded": str(folder)} if folder else {})}
        text = json.dumps(source)
        if len(text) <= MAX_DATASET_SOURCE_SIZE or not shown:
            return text
        shown = shown[:len(shown) // 2]


def _schema(schema: dict | None) -> str | None:
    """The label and feature columns in MLflow's column-spec form (the UI draws it as a table)."""
    if not schema:
        return None
    columns = [{"name": schema["label"], "type": "long"}]
    for role, kind in COLSPEC_TYPES.items():
        columns += [{"name": name, "type": kind} for name in schema.get(role, ())]
    return json.dumps({"mlflow_colspec": columns})
