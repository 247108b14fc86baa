"""Training throughput and quality: our DeepFM loop against DeepCTR-Torch 0.3.0's DeepFM, same data, same run.

Each library gets its own preprocessing of the same raw rows (all.tsv, split by position into train/val/test):
- ours: our encoder (`prepare`, as `deepfm train` does): vocabularies and signed-log1p-then-standardize statistics
  fitted on the training rows, missing and unseen tokens on their own indices, numeric fields embedded.
- DeepCTR-Torch ("own" preprocessing): that of its examples/run_classification_criteo.py, made leak-free. Sparse
  features C1..C26: missing filled with the token '-1', then a LabelEncoder fitted on the training rows only
  (classes in sorted order, as sklearn's; '-1' is an ordinary class), and a val/test token never seen in training
  mapped to one reserved index after the classes (vocabulary_size = training classes + 1). Dense features
  I1..I13: missing filled with 0, then signed log1p, sign(x) log1p(|x|) (the example has no log; it is added for
  the counts, as in our encoder), then MinMaxScaler(feature_range=(0, 1)) fitted on the training rows only
  (val/test values outside the training range are not clipped: sklearn's default). The example fits both on all
  rows before splitting; here nothing is fitted on val or test rows.
- DeepCTR-Torch ("ours" preprocessing, as this benchmark did before): our encoder's output, i.e. SparseFeat
  vocabulary sizes = our categorical_dims, DenseFeats = our standardized log1p columns with NaN filled with 0.
  That hands DeepCTR inputs built for our model (missing numerics become the mean, with no missing indicator).

Both libraries get the seed hyperparameters (embedding 16, hidden [128, 64, 32], relu, dropout 0.2, Adam lr 0.001,
no L2), batch 4096, and the same torch thread count. Throughput is training samples per second over one epoch
(evaluation excluded). The ratio comes from one run, since this machine's neighbours make absolute numbers drift.

It also times an isolated MLP of the same shape (fwd + bwd + Adam step on random input of width fields x 16):
no DeepFM can train faster than its own MLP, so ours / that is the fraction of the bound we reach.

    python bench/train_throughput.py                      # 1M rows, 1 epoch each, DeepCTR both ways
    python bench/train_throughput.py --threads 1          # one core each (fair on a shared machine)
    python bench/train_throughput.py --epochs 4           # + per-epoch AUCs, early stopping for ours
    python bench/train_throughput.py --deepctr-inputs own # DeepCTR with its own preprocessing only
    python bench/train_throughput.py --ours-only          # no DeepCTR (also what bench/memory.py runs)

Needs `pip install -e .[bench]` for DeepCTR-Torch. Writes JSON to --out or $OUT when set.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from common import ensure_data, load_prepared, machine, max_rss_mib, write_json


def mlp_bound(width: int, batch: int, steps: int = 60) -> float:
    """Samples/s of the policy's MLP alone: fwd + bwd + fused Adam on random input, BCE loss."""
    from deepfm_tuner.model.config import PolicyConfig
    from deepfm_tuner.model.deepfm import multilayer_perceptron

    policy = PolicyConfig()
    torch.manual_seed(0)
    mlp = multilayer_perceptron(width, policy.deep_hidden_units, policy.activation_fn, policy.dropout)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=policy.learning_rate, fused=True)
    x, y = torch.randn(batch, width), torch.randint(0, 2, (batch,)).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        loss = loss_fn(mlp(x).squeeze(1), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    best = 0.0
    for _ in range(3):  # best of three: the bound, not the neighbours' noise
        started = time.perf_counter()
        for _ in range(steps // 3):
            step()
        best = max(best, batch * (steps // 3) / (time.perf_counter() - started))
    return best


def run_ours(prepared, epochs: int, batch: int, threads: int) -> dict:
    from deepfm_tuner.model.config import PolicyConfig, TrainConfig
    from deepfm_tuner.model.train import evaluate, train

    control = TrainConfig(batch_size=batch, max_epochs=epochs, patience=2, device="cpu", threads=threads, seed=42)
    result = train(prepared, PolicyConfig(), control)
    test_auc, test_logloss = evaluate(result.model, prepared.test)
    first = result.history[0]
    return {
        "samples_per_second": first.samples_per_second, "epoch_seconds": first.seconds,
        "best_epoch": result.best_epoch, "stop_reason": result.stop_reason,
        "test_auc": test_auc, "test_logloss": test_logloss,
        "history": [{"epoch": m.epoch, "val_auc": m.val_auc, "samples_per_second": m.samples_per_second}
                    for m in result.history],
    }


def deepctr_inputs(part, n_categorical: int, n_numeric: int) -> tuple[dict, np.ndarray]:
    """Our encoder's output as DeepCTR inputs (the "ours" preprocessing)."""
    x = {f"C{i + 1}": part.categorical[:, i].numpy() for i in range(n_categorical)}
    numeric = np.nan_to_num(part.numeric.numpy(), nan=0.0)
    x.update({f"I{i + 1}": numeric[:, i] for i in range(n_numeric)})
    return x, part.labels.numpy()


def label_encode(column, n_train: int) -> tuple[np.ndarray, int]:
    """A Criteo token column (pandas Categorical) -> (int64 indices, vocabulary size): missing -> the token '-1',
    then the mapping of sklearn's LabelEncoder fitted on the first n_train rows (classes sorted), tokens not among
    those classes -> the reserved index len(classes)."""
    categories = np.asarray(column.cat.categories.astype(str), dtype=object)
    codes = column.cat.codes.to_numpy().astype(np.int64)  # -1 for missing
    where = np.flatnonzero(categories == "-1")
    if len(where):  # '-1' is already a token: missing joins it
        codes[codes < 0] = where[0]
    else:
        categories = np.append(categories, np.array(["-1"], dtype=object))
        codes[codes < 0] = len(categories) - 1
    seen = np.bincount(codes[:n_train], minlength=len(categories)) > 0
    classes = np.flatnonzero(seen)
    classes = classes[np.argsort(categories[classes].astype(str), kind="stable")]  # LabelEncoder's sorted order
    index = np.full(len(categories), len(classes), dtype=np.int64)  # unseen in training -> reserved index
    index[classes] = np.arange(len(classes))
    return index[codes], len(classes) + 1


def deepctr_own_inputs(directory) -> tuple[dict[str, tuple[dict, np.ndarray]], list[int]]:
    """DeepCTR-Torch's own Criteo preprocessing, fitted on the training rows only (see the module docstring):
    ({"train"/"val"/"test": (inputs, labels)}, sparse vocabulary sizes)."""
    import json

    from sklearn.preprocessing import MinMaxScaler

    from deepfm_tuner.model.data.frames import read_table
    from deepfm_tuner.model.data.schema import CRITEO_CATEGORICAL, CRITEO_NUMERIC

    rows = json.loads((directory / "info.json").read_text())["rows"]
    n_train = rows["train"]
    edges = np.cumsum([0, rows["train"], rows["val"], rows["test"]])
    frame = read_table(directory / "all.tsv", "criteo")
    columns, sizes = {}, []
    for c in CRITEO_CATEGORICAL:
        columns[c], size = label_encode(frame[c], n_train)
        sizes.append(size)
    dense = frame[list(CRITEO_NUMERIC)].to_numpy(dtype=np.float64)
    dense = np.nan_to_num(dense, nan=0.0)  # fillna(0)
    dense = np.copysign(np.log1p(np.abs(dense)), dense)  # signed log1p
    scaler = MinMaxScaler(feature_range=(0, 1)).fit(dense[:n_train])
    dense = scaler.transform(dense).astype(np.float32)
    columns.update({c: dense[:, j] for j, c in enumerate(CRITEO_NUMERIC)})
    labels = frame["label"].to_numpy(dtype=np.float32)
    del frame
    parts = {name: ({c: v[a:b] for c, v in columns.items()}, labels[a:b])
             for name, a, b in zip(("train", "val", "test"), edges[:-1], edges[1:])}
    return parts, sizes


def run_deepctr(parts: dict[str, tuple[dict, np.ndarray]], sparse_sizes: list[int], n_dense: int, epochs: int,
                batch: int, name: str = "deepctr") -> dict:
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import DeepFM as DeepCTRDeepFM
    from sklearn.metrics import log_loss, roc_auc_score

    from deepfm_tuner.model.config import PolicyConfig

    policy = PolicyConfig()
    columns = [SparseFeat(f"C{i + 1}", vocabulary_size=v, embedding_dim=policy.embedding_dim)
               for i, v in enumerate(sparse_sizes)] + [DenseFeat(f"I{i + 1}", 1) for i in range(n_dense)]
    torch.manual_seed(42)
    model = DeepCTRDeepFM(columns, columns, dnn_hidden_units=policy.deep_hidden_units, l2_reg_linear=0.0,
                          l2_reg_embedding=0.0, l2_reg_dnn=0.0, dnn_dropout=policy.dropout,
                          dnn_activation=policy.activation_fn, task="binary", device="cpu", seed=42)
    model.compile(torch.optim.Adam(model.parameters(), lr=policy.learning_rate), "binary_crossentropy")
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = parts["train"], parts["val"], parts["test"]
    history = []
    for epoch in range(epochs):
        started = time.perf_counter()
        model.fit(x_train, y_train, batch_size=batch, epochs=1, verbose=0)
        seconds = time.perf_counter() - started
        p_val = model.predict(x_val, batch_size=65536).ravel()
        p_test = np.clip(model.predict(x_test, batch_size=65536).ravel().astype(np.float64), 1e-7, 1 - 1e-7)
        history.append({"epoch": epoch, "samples_per_second": len(y_train) / seconds, "epoch_seconds": seconds,
                        "val_auc": float(roc_auc_score(y_val, p_val)), "test_auc": float(roc_auc_score(y_test, p_test)),
                        "test_logloss": float(log_loss(y_test, p_test, labels=[0, 1]))})
        print(f"{name} epoch {epoch}: {history[-1]}", flush=True)
    best = max(history, key=lambda h: h["val_auc"])
    return {"samples_per_second": history[0]["samples_per_second"], "epoch_seconds": history[0]["epoch_seconds"],
            "sparse_vocabulary_rows": int(sum(sparse_sizes)),
            "test_auc_epoch_1": history[0]["test_auc"], "best_epoch": best["epoch"], "test_auc": best["test_auc"],
            "best_test_auc_any_epoch": max(h["test_auc"] for h in history), "history": history}


def compare(results: dict, ours: dict, theirs: dict, suffix: str, epochs: int) -> None:
    results[f"throughput_ratio{suffix}"] = ours["samples_per_second"] / theirs["samples_per_second"]
    if epochs == 1:  # both after one epoch
        results[f"test_auc_ours_minus_deepctr{suffix}_epoch_1"] = ours["test_auc"] - theirs["test_auc_epoch_1"]
    else:  # ours early-stopped (best val epoch restored) vs theirs at its best val epoch, and at its best test
        results[f"test_auc_ours_minus_deepctr{suffix}_best_val_epoch"] = ours["test_auc"] - theirs["test_auc"]
        results[f"test_auc_ours_minus_deepctr{suffix}_best_test_epoch"] = (
            ours["test_auc"] - theirs["best_test_auc_any_epoch"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows (val and test: 1/8 of that each)")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs: ours stops early (patience 2, best epoch restored); DeepCTR runs them all")
    parser.add_argument("--ours-only", action="store_true", help="skip DeepCTR-Torch and the MLP bound")
    parser.add_argument("--deepctr-inputs", choices=("own", "ours", "both"), default="both",
                        help="DeepCTR-Torch's preprocessing: its own Criteo example's (fitted on train rows), our "
                             "encoder's features, or both one after the other (default)")
    parser.add_argument("--out", default=None, help="directory for train_throughput.json (default: $OUT)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    directory = ensure_data(args.rows, args.rows // 8, args.rows // 8)
    prepared, prepare_seconds = load_prepared(directory)
    results = {"machine": machine(), "args": vars(args), "data": prepared.summary(),
               "prepare_seconds": prepare_seconds}
    width = len(prepared.encoder.schema.features) * 16
    bounds = [] if args.ours_only else [mlp_bound(width, args.batch)]  # before and after ours: keep the best
    results["ours"] = run_ours(prepared, args.epochs, args.batch, args.threads)
    print(f"ours: {results['ours']['samples_per_second']:,.0f} samples/s", flush=True)
    results["ours"]["max_rss_mib"] = max_rss_mib()
    if not args.ours_only:
        results["mlp_bound_samples_per_second"] = max(bounds + [mlp_bound(width, args.batch)])
        results["fraction_of_mlp_bound"] = results["ours"]["samples_per_second"] / results["mlp_bound_samples_per_second"]
        enc = prepared.encoder
        n_num = len(enc.schema.numeric)
        if args.deepctr_inputs in ("own", "both"):  # the headline: each library with its own preprocessing
            started = time.perf_counter()
            parts, sizes = deepctr_own_inputs(directory)
            results["deepctr_own_prepare_seconds"] = time.perf_counter() - started
            results["deepctr"] = run_deepctr(parts, sizes, n_num, args.epochs, args.batch, "deepctr (own)")
            del parts
            compare(results, results["ours"], results["deepctr"], "", args.epochs)
        if args.deepctr_inputs in ("ours", "both"):  # DeepCTR fed our encoder's features, as before
            n_cat = len(enc.categorical_dims)
            parts = {name: deepctr_inputs(getattr(prepared, name), n_cat, n_num) for name in ("train", "val", "test")}
            key = "deepctr_our_features"
            results[key] = run_deepctr(parts, enc.categorical_dims, n_num, args.epochs, args.batch,
                                       "deepctr (our features)")
            compare(results, results["ours"], results[key], "_our_features", args.epochs)
    write_json(results, "train_throughput.json", args.out)
    if not args.ours_only:
        ratios = ", ".join(f"{k.removeprefix('throughput_ratio') or '_own'}: {v:.2f}x"
                           for k, v in results.items() if k.startswith("throughput_ratio"))
        aucs = ", ".join(f"{k}: {v:+.4f}" for k, v in results.items() if k.startswith("test_auc_ours_minus"))
        print(f"ratio {ratios}; MLP bound {results['mlp_bound_samples_per_second']:,.0f}/s "
              f"({results['fraction_of_mlp_bound']:.0%} reached); {aucs}")
    assert all(math.isfinite(h["val_auc"]) for h in results["ours"]["history"])


if __name__ == "__main__":
    main()
