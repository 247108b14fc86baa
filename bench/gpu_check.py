"""GPU check, one script for a lent H100/H200: do CUDA and CPU agree, do the paths that failed before issue 19
work, and how fast does training run there?

1. Agreement: one DeepFM (seeded weights, non-zero first-order weights) and one batch of Criteo-shaped rows,
   on the CPU and on the device: logits in fp32 (tight tolerance) and under bf16 autocast (loose tolerance), and
   the fp32 gradients of every parameter after one backward.
2. The training path under autocast, with a multi-valued field: `field_embeddings` + `logits_from` in bf16
   autocast on the device against fp32 on the CPU (logits, loss, gradients); the FM term must stay float32.
3. A memory-mapped, read-only encoded split (as the on-disk dataset maps it) copied to the device: equal rows.
4. Throughput: `model.train.train` with the data resident on the device, batch 4096, 16384 and 65536, two
   epochs each; the second epoch's samples/s is reported (the first pays for warm-up). Goal: >= 10M samples/s
   on one H100.
5. The pinned-host branch, forced (a device budget with room for the training state only): batches gathered on
   the host and copied through pinned memory; samples/s and AUC against the device-resident run.
6. Two trials back to back in one process, no empty_cache: the device's memory after each and where the
   second trial's data goes (the budget counts the allocator's cached blocks as this process's).
7. Two workers on two devices (where there are two): `deepfm tune --workers 2` hands each its own GPU; each
   trains and reports the device it saw.
8. The optimizer: the same lazy Adam steps on the CPU and on the device (weights compared after each of 20
   steps on Criteo-shaped batches), the device's embedding step run under `torch.cuda.set_sync_debug_mode
   ("error")`, so any host sync in it fails the check.

Data: encoded rows of the Criteo shape drawn directly (26 categorical fields with the synthetic generator's
Zipf frequencies and cardinalities, 13 numeric fields with 20% missing, labels from a logistic model; a
multi-valued field of up to 4 tokens for check 2), so no TSV parsing is spent on device time. Needs torch,
numpy, pandas, pyarrow, scikit-learn, pyyaml; check 7 also imports the tuner (optuna, mlflow).

    python bench/gpu_check.py                          # on the GPU machine: 4M rows
    python bench/gpu_check.py --device cpu --rows small   # smoke test anywhere (20k rows, seconds)

Writes gpu_check.json to --out or $OUT when set.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, max_rss_mib, write_json  # noqa: E402

from deepfm_tuner.model import train as training  # noqa: E402
from deepfm_tuner.model.config import PolicyConfig, TrainConfig  # noqa: E402
from deepfm_tuner.model.data.encoder import EncodedFeatures  # noqa: E402
from deepfm_tuner.model.data.schema import CRITEO_CATEGORICAL, CRITEO_NUMERIC, FeatureSchema, criteo_schema  # noqa: E402
from deepfm_tuner.model.data.synth import SynthSpec, _cardinalities, _zipf_ids  # noqa: E402
from deepfm_tuner.model.data.tensors import EncodedRows, PreparedData, device_memory_budget  # noqa: E402
from deepfm_tuner.model.deepfm import TRAINING_COPIES, DeepFM, estimate_parameters, fm_interaction  # noqa: E402
from deepfm_tuner.model.optim import make_optimizers  # noqa: E402
from deepfm_tuner.model.train import evaluate, train  # noqa: E402

BATCHES = (4096, 16384, 65536)
FP32_TOLERANCE = dict(rtol=1e-4, atol=1e-4)
BF16_TOLERANCE = dict(rtol=5e-2, atol=5e-2)  # bf16 keeps 8 bits of mantissa: ~0.4% per rounding
GRAD_TOLERANCE = dict(rtol=1e-3, atol=1e-6)
TAG_SLOTS, TAG_VOCABULARY = 4, 500  # the multi-valued field of check 2: up to 4 tokens of 500
GB = 1e9


@dataclass
class ShapeOnlyEncoder:
    """What `build_model` and `PreparedData.summary` read from a fitted encoder: the field layout only."""

    categorical_dims: list[int]
    schema: FeatureSchema = field(default_factory=criteo_schema)
    multivalued_dims: list[int] = field(default_factory=list)
    multivalued_lengths: list[int] = field(default_factory=list)


def criteo_shaped(rows: int, seed: int = 0, tags: bool = False) -> tuple[ShapeOnlyEncoder, EncodedRows]:
    """Encoded rows as our encoder would emit them for the synthetic Criteo data (index 0 missing, 1 OOV); with
    `tags`, one multi-valued field too (0-4 tokens a row, -1 padding)."""
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
    multivalued = np.empty((rows, 0), dtype=np.int32)
    encoder = ShapeOnlyEncoder([int(c) + 2 for c in cards])
    if tags:
        multivalued = rng.integers(2, TAG_VOCABULARY + 2, (rows, TAG_SLOTS)).astype(np.int32)
        multivalued[np.arange(TAG_SLOTS) >= rng.integers(0, TAG_SLOTS + 1, rows)[:, None]] = -1
        encoder.multivalued_dims, encoder.multivalued_lengths = [TAG_VOCABULARY + 2], [TAG_SLOTS]
    logit = weights / weights.std() + np.nan_to_num(numeric[:, :3]).sum(axis=1) * 0.3 - 1.1
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return encoder, EncodedRows(EncodedFeatures(categorical, multivalued, numeric), labels)


def rows(data: EncodedRows, start: int, stop: int) -> EncodedRows:
    f = data.features
    return EncodedRows(EncodedFeatures(f.categorical[start:stop], f.multivalued[start:stop], f.numeric[start:stop]),
                       data.labels[start:stop])


def split(data: EncodedRows, val_fraction: float = 0.05) -> tuple[EncodedRows, EncodedRows]:
    n_val = max(1, int(len(data) * val_fraction))
    return rows(data, n_val, len(data)), rows(data, 0, n_val)


def prepared_from(encoder: ShapeOnlyEncoder, data: EncodedRows) -> PreparedData:
    train_part, val_part = split(data)
    return PreparedData(encoder, {"train": train_part, "val": val_part, "test": val_part}, fingerprint="criteo-shaped")


def model_pair(encoder: ShapeOnlyEncoder, device: str, policy: PolicyConfig | None = None) -> tuple[DeepFM, DeepFM]:
    """One seeded DeepFM on the CPU and the same weights on `device`."""
    torch.manual_seed(0)
    policy = policy or PolicyConfig()
    args = (encoder.categorical_dims, encoder.multivalued_dims, encoder.multivalued_lengths, len(CRITEO_NUMERIC))
    cpu_model = DeepFM(*args, policy)
    torch.nn.init.normal_(cpu_model.first_order.weight, std=0.05)
    torch.nn.init.normal_(cpu_model.embedding.weight, std=0.1)
    dev_model = DeepFM(*args, policy).to(device)
    dev_model.load_state_dict(cpu_model.state_dict())
    return cpu_model, dev_model


def grad_errors(cpu_model: DeepFM, dev_model: DeepFM) -> dict[str, float]:
    dev_params = dict(dev_model.named_parameters())
    return {name: float((p.grad - dev_params[name].grad.float().cpu()).abs().max())
            for name, p in cpu_model.named_parameters()}


def agreement(encoder: ShapeOnlyEncoder, data: EncodedRows, device: str) -> dict:
    """CPU vs device on the same weights and batch (the forward used by evaluation and scoring)."""
    cpu_model, dev_model = model_pair(encoder, device)
    cpu_model.eval()
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
    grads_ok = all(torch.allclose(p.grad, dev_params[name].grad.cpu(), **GRAD_TOLERANCE)
                   for name, p in cpu_model.named_parameters())
    return {
        "batch": len(batch), "logit_std": float(reference.std()),
        "fp32_max_abs_diff": float((fp32 - reference).abs().max()),
        "fp32_ok": bool(torch.allclose(fp32, reference, **FP32_TOLERANCE)),
        "bf16_max_abs_diff": float((bf16 - reference).abs().max()),
        "bf16_ok": bool(torch.allclose(bf16, reference, **BF16_TOLERANCE)),
        "grad_max_abs_diff": max(grad_errors(cpu_model, dev_model).values()), "grads_ok": bool(grads_ok),
        "tolerances": {"fp32": FP32_TOLERANCE, "bf16": BF16_TOLERANCE, "grad": GRAD_TOLERANCE},
    }


def training_path(device: str) -> dict:
    """The training step's forward and backward (`field_embeddings` + `logits_from`) under bf16 autocast on the
    device, with a multi-valued field, against fp32 on the CPU; the FM term against a float64 reference."""
    encoder, data = criteo_shaped(4096, seed=1, tags=True)
    cpu_model, dev_model = model_pair(encoder, device, PolicyConfig(dropout=0.0))  # train mode, no random masks
    batch = data.tensors()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    out = {}
    for name, model, where in (("cpu_fp32", cpu_model, "cpu"), ("device_bf16", dev_model, device)):
        inputs = [t.to(where) for t in (batch.categorical, batch.multivalued, batch.numeric)]
        enabled = name == "device_bf16"
        with torch.autocast(torch.device(where).type, dtype=torch.bfloat16, enabled=enabled):
            embeddings, first = model.field_embeddings(*inputs)
            logits = model.logits_from(embeddings, first)
            fm = fm_interaction(embeddings)
        loss = loss_fn(logits.float(), batch.labels.to(where))
        loss.backward()
        out[name] = (logits.detach().float().cpu(), float(loss.detach()), fm.detach(), embeddings.detach())
    reference = out["cpu_fp32"][0]
    logits, loss, fm, embeddings = out["device_bf16"]
    exact_fm = fm_interaction(embeddings.double())  # the same field vectors: the error is the formula's alone
    fm_error = float((fm.double() - exact_fm).abs().max() / exact_fm.abs().mean())
    errors = grad_errors(cpu_model, dev_model)
    scale = max(float(p.grad.abs().max()) for p in cpu_model.parameters())
    return {
        "rows": len(batch), "multivalued_slots": TAG_SLOTS, "fm_dtype": str(fm.dtype),
        "fm_relative_error": fm_error, "fm_ok": fm.dtype == torch.float32 and fm_error < 1e-5,
        "logits_max_abs_diff": float((logits - reference).abs().max()),
        "logits_ok": bool(torch.allclose(logits, reference, **BF16_TOLERANCE)),
        "loss_cpu": out["cpu_fp32"][1], "loss_device": loss, "loss_ok": abs(loss - out["cpu_fp32"][1]) < 1e-2,
        "grad_max_abs_diff": max(errors.values()), "grad_scale": scale,
        "grads_ok": max(errors.values()) <= 0.05 * scale,  # bf16 activations: a few % of the largest gradient
    }


def optimizer_steps(encoder: ShapeOnlyEncoder, data: EncodedRows, device: str, steps: int = 20) -> dict:
    """The same lazy-Adam update on both devices, step by step; the device's embedding step syncs nothing. On a
    CPU the device's optimizers are forced to the GPU's (sync-free) branch."""
    policy = PolicyConfig(dropout=0.0)  # no random masks: both models see the same forward
    cpu_model, dev_model = model_pair(encoder, device, policy)
    control = TrainConfig(weight_decay=1e-5)
    cpu_opt = make_optimizers(cpu_model, policy, control, "cpu")
    dev_opt = make_optimizers(dev_model, policy, control, "cuda")
    start = {n: p.detach().clone() for n, p in cpu_model.named_parameters()}
    worst = 0.0
    for step in range(steps):
        batch = rows(data, step * 4096, (step + 1) * 4096).tensors()
        for model, optimizers, where in ((cpu_model, cpu_opt, "cpu"), (dev_model, dev_opt, device)):
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            embeddings, first = model.field_embeddings(batch.categorical.to(where), batch.multivalued.to(where),
                                                       batch.numeric.to(where))
            torch.nn.functional.binary_cross_entropy_with_logits(
                model.logits_from(embeddings, first), batch.labels.to(where)).backward()
            optimizers[0].step()
            if where == "cuda":
                torch.cuda.set_sync_debug_mode("error")  # a host sync inside the step raises
            try:
                optimizers[1].step()
            finally:
                if where == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        dev_params = dict(dev_model.named_parameters())
        worst = max(worst, max(float((p - dev_params[n].detach().cpu()).abs().max())
                               for n, p in cpu_model.named_parameters()))
    moved = max(float((p.detach() - start[n]).abs().max()) for n, p in cpu_model.named_parameters())
    # float atomics sum a GPU's gradients in another order: the weights may differ by rounding, not by a rule
    return {"steps": steps, "max_weight_diff": worst, "max_weight_moved": moved, "same_update_ok": worst <= 0.05 * moved,
            "sync_checked": device == "cuda"}


def mapped_copy(data: EncodedRows, device: str) -> dict:
    """The encoded split as the on-disk dataset maps it (read-only .npy maps) made tensors and copied to the
    device, as `train` does with a mapped dataset: the same rows arrive."""
    f = data.features
    arrays = {"categorical": f.categorical, "multivalued": f.multivalued, "numeric": f.numeric, "labels": data.labels}
    with tempfile.TemporaryDirectory() as folder:
        for name, array in arrays.items():
            np.save(Path(folder) / f"{name}.npy", array)
        maps = {name: np.load(Path(folder) / f"{name}.npy", mmap_mode="r") for name in arrays}
        mapped = EncodedRows(EncodedFeatures(maps["categorical"], maps["multivalued"], maps["numeric"]),
                             maps["labels"])
        started = time.perf_counter()
        on_device = mapped.tensors().to(device)
        if device != "cpu":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        expected = data.tensors()
        same = all(torch.equal(a.cpu(), b) if not b.is_floating_point() else torch.allclose(a.cpu(), b, equal_nan=True)
                   for a, b in zip(on_device._tensors(), expected._tensors()))
        read_only = not any(m.flags.writeable for m in maps.values())
        return {"rows": len(data), "read_only_maps": read_only, "same_rows": bool(same), "seconds": seconds,
                "gb_per_second": expected.nbytes / GB / max(seconds, 1e-9), "ok": bool(same and read_only)}


def throughput(encoder: ShapeOnlyEncoder, data: EncodedRows, device: str, batches: tuple[int, ...]) -> list[dict]:
    prepared = prepared_from(encoder, data)
    out = []
    for batch in batches:
        control = TrainConfig(batch_size=batch, max_epochs=2, patience=5, device=device, seed=42)
        resident, _ = training.placement(prepared, PolicyConfig(), device)
        started = time.perf_counter()
        result = train(prepared, PolicyConfig(), control)
        wall = time.perf_counter() - started
        last = result.history[-1]
        val_auc, _ = evaluate(result.model, prepared.val.to(device))
        out.append({"batch": batch, "train_resident": resident, "samples_per_second": last.samples_per_second,
                    "first_epoch_samples_per_second": result.history[0].samples_per_second,
                    "epoch_seconds": last.seconds, "val_auc": val_auc, "wall_seconds": wall})
        print(f"batch {batch}: {last.samples_per_second:,.0f} samples/s (val AUC {val_auc:.4f}, resident {resident})",
              flush=True)
        del result
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def pinned_host(encoder: ShapeOnlyEncoder, data: EncodedRows, device: str, batch: int) -> dict:
    """The host branch, forced: a device budget with room for the training state only, so both splits stay on
    the host and each batch is gathered there and copied from pinned memory. Same seed: the same batches as the
    resident run, so the same AUC (up to CUDA's non-deterministic gradient sums)."""
    if device == "cpu":
        return {"skipped": "the CPU trains where the rows are: no pinned copy"}
    prepared = prepared_from(encoder, data)
    parameters = estimate_parameters(encoder.categorical_dims, encoder.multivalued_dims, len(CRITEO_NUMERIC),
                                     PolicyConfig())
    control = TrainConfig(batch_size=batch, max_epochs=2, patience=5, device=device, seed=42)
    budget = training.device_memory_budget
    training.device_memory_budget = lambda where: parameters * 4 * TRAINING_COPIES  # the state fits, no data
    try:
        placement = training.placement(prepared, PolicyConfig(), device)
        host = train(prepared, PolicyConfig(), control)
    finally:
        training.device_memory_budget = budget
    resident = train(prepared, PolicyConfig(), control)
    difference = abs(host.best.val_auc - resident.best.val_auc)
    return {"placement": placement, "batch": batch,
            "host_samples_per_second": host.history[-1].samples_per_second,
            "resident_samples_per_second": resident.history[-1].samples_per_second,
            "host_val_auc": host.best.val_auc, "resident_val_auc": resident.best.val_auc,
            "ok": placement == (False, False) and difference < 2e-3}


def device_memory(device: str) -> dict:
    if device == "cpu":
        return {"max_rss_mib": max_rss_mib()}
    free, total = torch.cuda.mem_get_info()
    return {"allocated_gb": torch.cuda.memory_allocated() / GB, "reserved_gb": torch.cuda.memory_reserved() / GB,
            "driver_free_gb": free / GB, "budget_gb": device_memory_budget(device) / GB, "total_gb": total / GB}


def back_to_back(encoder: ShapeOnlyEncoder, data: EncodedRows, device: str, batch: int) -> list[dict]:
    """Two trials in one process as the tuner runs them (a full collection after each, no empty_cache): the
    memory after each and where the next one's data would go, by the budget and by the old rule (half the
    driver's free memory)."""
    prepared = prepared_from(encoder, data)
    control = TrainConfig(batch_size=batch, max_epochs=1, patience=5, device=device, seed=42)
    out = []
    for trial in range(2):
        placement = training.placement(prepared, PolicyConfig(), device)
        result = train(prepared, PolicyConfig(), control)
        model = weakref.ref(result.model)
        del result
        gc.collect()
        entry = {"trial": trial, "placement": placement, "model_freed": model() is None, **device_memory(device)}
        if device != "cpu":
            entry["next_train_resident_by_old_rule"] = prepared.train.nbytes <= torch.cuda.mem_get_info()[0] // 2
            entry["next_placement"] = training.placement(prepared, PolicyConfig(), device)
        out.append(entry)
        print(f"trial {trial}: {entry}", flush=True)
    return out


def two_workers(rows: int) -> dict:
    """Two processes as `deepfm tune --workers 2` starts them (each with the environment the coordinator gives
    it), training at once; each reports the device it trained on."""
    # the tuner (optuna, mlflow) only for this check: the rest of the script needs the model package alone
    from deepfm_tuner.tuner.pipeline.workers import cuda_device_count, gpu_env, visible_gpus

    gpus = visible_gpus(os.environ, cuda_device_count)
    if len(gpus) < 2:
        return {"skipped": f"{len(gpus)} GPU(s) visible: two workers on two devices need two"}
    command = [sys.executable, str(Path(__file__).resolve()), "--probe", "--rows", str(rows)]
    processes = [subprocess.Popen(command, env={**os.environ, **gpu_env(i, 2, gpus)}, stdout=subprocess.PIPE,
                                  text=True) for i in range(2)]
    reports = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in processes]
    return {"workers": reports, "ok": len({r["uuid"] for r in reports}) == 2}


def probe(rows: int) -> None:
    """One worker of check 7: train one epoch on the one visible GPU; print what it saw as one JSON line."""
    encoder, data = criteo_shaped(rows)
    prepared = prepared_from(encoder, data)
    result = train(prepared, PolicyConfig(), TrainConfig(batch_size=16384, max_epochs=1, device="cuda", seed=42))
    props = torch.cuda.get_device_properties(0)
    print(json.dumps({"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                      "devices": torch.cuda.device_count(),
                      "uuid": str(getattr(props, "uuid", props.name)), "name": props.name,
                      "samples_per_second": result.history[-1].samples_per_second, **device_memory("cuda")}))


def checked(results: dict, name: str, run) -> None:
    """Run one check; a failure is recorded and the next check still runs (device time is scarce)."""
    started = time.perf_counter()
    try:
        results[name] = run()
    except Exception as exc:  # noqa: BLE001 - recorded in the results, and the exit code says so
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(f"{name} ({time.perf_counter() - started:.1f} s): {results[name]}", flush=True)


def failed(results: dict) -> list[str]:
    bad = [k for k in ("fp32_ok", "bf16_ok", "grads_ok") if not results["agreement"].get(k)]
    for name in ("training_path", "optimizer", "mapped_copy", "pinned_host", "two_workers"):
        entry = results[name]
        if "error" in entry or ("skipped" not in entry and not all(v for k, v in entry.items() if k.endswith("ok"))):
            bad.append(name)
    bad += [name for name in ("throughput", "back_to_back") if isinstance(results[name], dict)]  # an error entry
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", default="4000000", help="rows of Criteo-shaped data, or 'small' (20,000)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--out", default=None)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # one worker of check 7
    args = parser.parse_args()
    n_rows = 20_000 if args.rows == "small" else int(args.rows)
    if args.probe:
        probe(n_rows)
        return
    batches = tuple(int(b) for b in args.batches.split(","))

    results: dict = {"machine": machine(), "device": args.device, "rows": n_rows}
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    started = time.perf_counter()
    encoder, data = criteo_shaped(n_rows)
    results["data_seconds"] = time.perf_counter() - started
    checked(results, "agreement", lambda: agreement(encoder, data, args.device))
    checked(results, "training_path", lambda: training_path(args.device))
    checked(results, "optimizer", lambda: optimizer_steps(encoder, data, args.device))
    checked(results, "mapped_copy", lambda: mapped_copy(data, args.device))
    checked(results, "throughput", lambda: throughput(encoder, data, args.device, batches))
    checked(results, "pinned_host", lambda: pinned_host(encoder, data, args.device, batches[len(batches) // 2]))
    checked(results, "back_to_back", lambda: back_to_back(encoder, data, args.device, batches[len(batches) // 2]))
    checked(results, "two_workers", lambda: two_workers(min(n_rows, 1_000_000)))
    if isinstance(results["throughput"], list):
        best = max(results["throughput"], key=lambda r: r["samples_per_second"])
        results["best_samples_per_second"] = best["samples_per_second"]
        results["goal_10m_met"] = best["samples_per_second"] >= 10e6
    results["failed"] = failed(results)
    write_json(results, "gpu_check.json", args.out)
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
