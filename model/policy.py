"""A trained scoring policy as a self-contained directory: V1 config, encoder, weights, metrics.

    policy.yaml     the V1 `policy_configs.scoring_policy` block, exactly as users write it
    training.yaml   the training control used (for reproduction)
    encoder.json    the fitted encoder (schema, vocabularies, numeric statistics)
    weights.pt      the model's state dict, loaded with weights_only=True (never a pickled module)
    metrics.json    per-epoch history, best epoch, and any evaluation metrics
    checksums.json  sha256 and size of every other file, written last; checked by `load`

`deepfm pull --out DIR` writes this directory to DIR/policy/ (beside DIR/source.json and the MLflow model):
`load` takes DIR itself too.
"""

from __future__ import annotations

import errno
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from deepfm_tuner.model.checksums import CorruptPolicyError, verify_checksums, write_checksums
from deepfm_tuner.model.config import PolicyConfig, TrainConfig, read_policy_yaml, write_policy_yaml
from deepfm_tuner.model.data.encoder import FeatureEncoder
from deepfm_tuner.model.data.frames import check_file
from deepfm_tuner.model.data.reader import as_frame, batch_labels, read_types, sample_frame, stream_batches
from deepfm_tuner.model.data.tensors import TensorData
from deepfm_tuner.model.deepfm import DeepFM
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.metrics import classification_metrics
from deepfm_tuner.model.parallel import scoring_pool

POLICY_FILE, TRAINING_FILE, ENCODER_FILE, WEIGHTS_FILE, METRICS_FILE = (
    "policy.yaml", "training.yaml", "encoder.json", "weights.pt", "metrics.json")
PULLED_POLICY = "policy"  # where `deepfm pull --out DIR` puts the policy directory: DIR/policy/
PREDICT_BATCH = 262144  # rows encoded per call (large: the encoder parallelises over columns)
LOAD_FIX = "pull it again with 'deepfm pull', or re-promote (or re-train) the policy"
MODEL_BATCH = 2048  # rows per forward pass on the CPU: activations stay in cache, few Python calls per row


@dataclass
class ScoringPolicy:
    config: PolicyConfig
    training: TrainConfig
    encoder: FeatureEncoder
    model: DeepFM
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, config: PolicyConfig, training: TrainConfig, encoder: FeatureEncoder,
              state_dict: dict[str, torch.Tensor] | None = None, metrics: dict[str, Any] | None = None) -> "ScoringPolicy":
        enc = encoder
        model = DeepFM(enc.categorical_dims, enc.multivalued_dims, enc.multivalued_lengths, len(enc.schema.numeric), config,
                       memory_copies=1)  # scoring holds the weights only
        if state_dict is not None:
            model.load_state_dict(state_dict)
        model.eval()
        return cls(config, training, encoder, model, metrics or {})

    # -- scoring -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, frame: pd.DataFrame, batch_size: int = PREDICT_BATCH) -> np.ndarray:
        """Click probability per row of a raw frame (extra columns ignored, unseen tokens -> OOV).

        The frame is encoded in large chunks (the encoder's per-call cost is amortised); on the CPU the model
        then scores cache-sized slices of each chunk, one slice per core at a time."""
        if len(frame) == 0:
            return np.empty(0, dtype=np.float32)
        self.model.eval()
        device = next(self.model.parameters()).device
        model_batch = MODEL_BATCH if device.type == "cpu" else batch_size
        threads = torch.get_num_threads() if device.type == "cpu" else 1
        out = np.empty(len(frame), dtype=np.float32)
        for start in range(0, len(frame), batch_size):
            chunk = frame if len(frame) <= batch_size else frame.iloc[start : start + batch_size]
            data = TensorData.from_features(self.encoder.transform(chunk, source="scoring input"), device=str(device))

            def score(offset: int, data: TensorData = data, start: int = start) -> None:
                with torch.inference_mode():  # per thread, like grad mode
                    stop = offset + model_batch
                    logits = self.model(data.categorical[offset:stop], data.multivalued[offset:stop],
                                        data.numeric[offset:stop])
                    out[start + offset : start + offset + len(logits)] = torch.sigmoid(logits.float()).cpu().numpy()

            offsets = range(0, len(chunk), model_batch)
            if threads > 1 and len(offsets) > 1:
                list(scoring_pool(threads).map(score, offsets))
            else:
                for offset in offsets:
                    score(offset)
        return out

    def evaluate_file(self, path: str | Path, fmt: str | None = None) -> dict[str, float]:
        """AUC, logloss and click rate on a labelled file, streamed in record batches (memory stays one batch
        whatever the file's size)."""
        path, fmt = check_file(path, fmt)
        schema = self.encoder.schema
        sample = sample_frame(path, fmt, rows=10, block_bytes=1 << 20)
        schema.check_columns(sample, str(path))
        labels, scores, rows = [], [], 0
        for batch in stream_batches(path, fmt, read_types(schema, lambda: sample, fmt), schema.label):
            labels.append(batch_labels(batch, schema.label, str(path), rows))
            scores.append(self.predict(as_frame(batch)))
            rows += batch.num_rows
        y = np.concatenate(labels) if labels else np.empty(0, dtype=np.float32)
        auc, logloss = classification_metrics(y, np.concatenate(scores) if scores else np.empty(0, np.float32))
        return {"rows": rows, "auc": auc, "logloss": logloss, "click_rate": float(y.mean()) if rows else float("nan")}

    def warm_up(self) -> None:
        """Score one row of missing values: builds the encoder's one-row lookups and runs every kernel once, so a
        server's first request costs what the others do. (An empty token is missing, and is looked up.)"""
        schema = self.encoder.schema
        row = {column: [""] for column in schema.categorical + schema.multivalued}
        self.predict(pd.DataFrame({**row, **{column: [None] for column in schema.numeric}}))

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_policy_yaml(directory / POLICY_FILE, self.config)
        (directory / TRAINING_FILE).write_text(yaml.safe_dump({"training": self.training.to_dict()}, sort_keys=False))
        self.encoder.save(directory / ENCODER_FILE)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save(state, directory / WEIGHTS_FILE)
        (directory / METRICS_FILE).write_text(json.dumps(self.metrics, indent=2, default=float) + "\n")
        write_checksums(directory)  # last: a directory with checksums was written completely
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", fix: str = LOAD_FIX) -> "ScoringPolicy":
        """The policy in `directory`, its files checked against checksums.json first (when it has one): a
        truncated or altered file is a one-line CorruptPolicyError that names it and `fix`. `directory` may be
        what `deepfm pull --out` wrote: its policy directory is then loaded."""
        directory = Path(directory)
        if not (directory / WEIGHTS_FILE).is_file() and (directory / PULLED_POLICY / WEIGHTS_FILE).is_file():
            directory = directory / PULLED_POLICY
        missing = [f for f in (POLICY_FILE, ENCODER_FILE, WEIGHTS_FILE) if not (directory / f).is_file()]
        if missing:
            raise DataError(f"{directory} is not a scoring-policy directory: missing {', '.join(missing)}; "
                            f"point at the output of 'deepfm train' or 'deepfm pull'")
        verify_checksums(directory, fix)
        config, _ = read_policy_yaml(directory / POLICY_FILE)
        training = TrainConfig()
        if (directory / TRAINING_FILE).is_file():
            training = TrainConfig.from_dict((yaml.safe_load((directory / TRAINING_FILE).read_text()) or {}).get("training"))
        encoder = FeatureEncoder.load(directory / ENCODER_FILE)
        try:
            state = torch.load(directory / WEIGHTS_FILE, map_location=device, weights_only=True)
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, OSError) as exc:  # truncated, no checksums
            if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise CorruptPolicyError(f"{directory / WEIGHTS_FILE} cannot be read ({first}); {fix}") from None
        metrics = json.loads((directory / METRICS_FILE).read_text()) if (directory / METRICS_FILE).is_file() else {}
        policy = cls.build(config, training, encoder, state, metrics)
        policy.model.to(device)
        return policy
