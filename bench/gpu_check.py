"""GPU check, one script for a lent H100/H200: do CUDA and CPU agree, and how fast does training run there?

1. Agreement: one DeepFM (seeded weights, non-zero first-order weights) and one batch of Criteo-shaped rows,
   on the CPU and on the device: logits in fp32 (tight tolerance) and under the bf16 autocast that training and
   evaluation use on CUDA (loose tolerance), and the fp32 gradients of every parameter after one backward.
2. Throughput: `model.train.train` with the data resident on the device, batch 4096, 16384 and 65536, two
   epochs each; the second epoch's samples/s is reported (the first pays for warm-up). Goal: >= 10M samples/s
   on one H100.

Data: encoded rows of the Criteo shape drawn directly (26 categorical fields with the synthetic generator's
Zipf frequencies and cardinalities, 13 numeric fields with 20% missing, labels from a logistic model), so no
TSV parsing is spent on device time. Needs torch, numpy, pandas, pyarrow, scikit-learn, pyyaml: not optuna
or mlflow.

    python bench/gpu_check.py                          # on the GPU machine: 4M rows
    python bench/gpu_check.py --device cpu --rows small   # smoke test anywhere (20k rows, seconds)

Writes gpu_check.json to --out or $OUT when set.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json  # noqa: E402

from deepfm_tuner.model.config import PolicyConfig, TrainConfig  # noqa: E402
from deepfm_tuner.model.data.encoder import EncodedFeatures  # noqa: E402
from deepfm_tuner.model.data.schema import CRITEO_CATEGORICAL, CRITEO_NUMERIC, FeatureSchema, criteo_schema  # noqa: E402
from deepfm_tuner.model.data.synth import SynthSpec, _cardinalities, _zipf_ids  # noqa: E402
from deepfm_tuner.model.data.tensors import EncodedRows, PreparedData  # noqa: E402
from deepfm_tuner.model.deepfm import DeepFM  # noqa: E402
from deepfm_tuner.model.train import evaluate, train  # noqa: E402

BATCHES = (4096, 16384, 65536)
FP32_TOLERANCE = dict(rtol=1e-4, atol=1e-4)
BF16_TOLERANCE = dict(rtol=5e-2, atol=5e-2)  # bf16 keeps 8 bits of mantissa: ~0.4% per rounding
GRAD_TOLERANCE = dict(rtol=1e-3, atol=1e-6)


@dataclass
class ShapeOnlyEncoder:
    """What `build_model` and `PreparedData.summary` read from a fitted encoder: the field layout only."""

    categorical_dims: list[int]
    schema: FeatureSchema = field(default_factory=criteo_schema)
    multivalued_dims: list[int] = field(default_factory=list)
    multivalued_lengths: list[int] = field(default_factory=list)


def criteo_shaped(rows: int, seed: int = 0) -> tuple[ShapeOnlyEncoder, EncodedRows]:
    """Encoded rows as our encoder would emit them for the synthetic Criteo data (index 0 missing, 1 OOV)."""
    rng = np.random.default_rng(seed)
    cards = _cardinalities(SynthSpec(), rng)
    categorical = np.empty((rows, len(CRITEO_CATEGORICAL)), dtype=np.int32)
    weights = np.zeros(rows)
    for j, card in enumerate(cards):
        ids = _zipf_ids(rng, rows, int(card), exponent=rng.uniform(0.8, 1.2)) + 2
        ids[rng.random(rows) < 0.1] = 0
        categorical[:, j] = ids
        weights += rng.normal(0, 0.3, int(card) + 2)[ids]
    numeric = rng.normal(0, 1, (rows, len(CRITEO_NUMERIC))).astype(np.float32)
    numeric[rng.random(numeric.shape) < 0.2] = np.nan
    logit = weights / weights.std() + np.nan_to_num(numeric[:, :3]).sum(axis=1) * 0.3 - 1.1
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    data = EncodedRows(EncodedFeatures(categorical, np.empty((rows, 0), dtype=np.int32), numeric), labels)
    return ShapeOnlyEncoder([int(c) + 2 for c in cards]), data


def rows(data: EncodedRows, start: int, stop: int) -> EncodedRows:
    f = data.features
    return EncodedRows(EncodedFeatures(f.categorical[start:stop], f.multivalued[start:stop], f.numeric[start:stop]),
                       data.labels[start:stop])


def split(data: EncodedRows, val_fraction: float = 0.05) -> tuple[EncodedRows, EncodedRows]:
    n_val = max(1, int(len(data) * val_fraction))
    return rows(data, n_val, len(data)), rows(data, 0, n_val)


def agreement(encoder: ShapeOnlyEncoder, data: EncodedRows, device: str) -> dict:
    """CPU vs device on the same weights and batch."""
    torch.manual_seed(0)
    cpu_model = DeepFM(encoder.categorical_dims, [], [], len(CRITEO_NUMERIC), PolicyConfig())
    torch.nn.init.normal_(cpu_model.first_order.weight, std=0.05)
    torch.nn.init.normal_(cpu_model.embedding.weight, std=0.1)
    cpu_model.eval()
    dev_model = DeepFM(encoder.categorical_dims, [], [], len(CRITEO_NUMERIC), PolicyConfig()).to(device)
    dev_model.load_state_dict(cpu_model.state_dict())
    dev_model.eval()
    batch = rows(data, 0, min(4096, len(data))).tensors()
    inputs = (batch.categorical, batch.multivalued, batch.numeric)
    dev_inputs = tuple(t.to(device) for t in inputs)
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for this comparison
    try:
        with torch.no_grad():
            reference = cpu_model(*inputs)
            fp32 = dev_model(*dev_inputs).cpu()
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
                bf16 = dev_model(*dev_inputs).float().cpu()
        # gradients of every parameter (fp32), through a BCE loss on the batch's labels
        loss_fn = torch.nn.BCEWithLogitsLoss()
        for model, args, labels in ((cpu_model, inputs, batch.labels), (dev_model, dev_inputs, batch.labels.to(device))):
            model.zero_grad()
            loss_fn(model(*args), labels).backward()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    dev_params = dict(dev_model.named_parameters())
    grad_errors = {name: float((p.grad - dev_params[name].grad.cpu()).abs().max()) for name, p in cpu_model.named_parameters()}
    grads_ok = all(torch.allclose(p.grad, dev_params[name].grad.cpu(), **GRAD_TOLERANCE)
                   for name, p in cpu_model.named_parameters())
    return {
        "batch": len(batch), "logit_std": float(reference.std()),
        "fp32_max_abs_diff": float((fp32 - reference).abs().max()),
        "fp32_ok": bool(torch.allclose(fp32, reference, **FP32_TOLERANCE)),
        "bf16_max_abs_diff": float((bf16 - reference).abs().max()),
        "bf16_ok": bool(torch.allclose(bf16, reference, **BF16_TOLERANCE)),
        "grad_max_abs_diff": max(grad_errors.values()), "grads_ok": bool(grads_ok),
        "tolerances": {"fp32": FP32_TOLERANCE, "bf16": BF16_TOLERANCE, "grad": GRAD_TOLERANCE},
    }


def throughput(encoder: ShapeOnlyEncoder, data: EncodedRows, device: str, batches: tuple[int, ...]) -> list[dict]:
    train_part, val_part = split(data)
    prepared = PreparedData(encoder, {"train": train_part, "val": val_part, "test": val_part},
                            fingerprint="criteo-shaped")
    out = []
    for batch in batches:
        control = TrainConfig(batch_size=batch, max_epochs=2, patience=5, device=device, seed=42)
        started = time.perf_counter()
        result = train(prepared, PolicyConfig(), control)
        wall = time.perf_counter() - started
        last = result.history[-1]
        val_auc, _ = evaluate(result.model, prepared.val.to(device))
        out.append({"batch": batch, "samples_per_second": last.samples_per_second,
                    "first_epoch_samples_per_second": result.history[0].samples_per_second,
                    "epoch_seconds": last.seconds, "val_auc": val_auc, "wall_seconds": wall})
        print(f"batch {batch}: {last.samples_per_second:,.0f} samples/s (val AUC {val_auc:.4f})", flush=True)
        del result
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", default="4000000", help="rows of Criteo-shaped data, or 'small' (20,000)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = 20_000 if args.rows == "small" else int(args.rows)
    batches = tuple(int(b) for b in args.batches.split(","))

    results: dict = {"machine": machine(), "device": args.device, "rows": rows}
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    started = time.perf_counter()
    encoder, data = criteo_shaped(rows)
    results["data_seconds"] = time.perf_counter() - started
    results["agreement"] = agreement(encoder, data, args.device)
    print(f"agreement: {results['agreement']}", flush=True)
    results["throughput"] = throughput(encoder, data, args.device, batches)
    best = max(results["throughput"], key=lambda r: r["samples_per_second"])
    results["best_samples_per_second"] = best["samples_per_second"]
    results["goal_10m_met"] = best["samples_per_second"] >= 10e6
    write_json(results, "gpu_check.json", args.out)
    ok = all(results["agreement"][k] for k in ("fp32_ok", "bf16_ok", "grads_ok"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
