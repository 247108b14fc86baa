"""Criteo-format synthetic CTR data with a known click probability, hence a known best achievable AUC/logloss.

Ground truth: logit = bias + first-order weights + FM pairwise terms <v_i, v_j> over a latent vector per
token (numeric fields: log-count x field vector) + non-linear higher-order terms (a small random tanh network
over the latent vectors and three-way products). Tokens follow Zipf-like frequencies and values go missing at
per-field rates, as in the real data. Labels ~ Bernoulli(sigmoid(logit)), so scoring the test split with the true
probability gives the Bayes-optimal AUC and logloss: no model can beat them in expectation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from .schema import CRITEO_CATEGORICAL, CRITEO_NUMERIC
from .train import classification_metrics

LATENT_DIM = 4
LOGIT_STD = 1.4  # spread of the true logit at signal=1: a best achievable AUC near 0.80, like Criteo


@dataclass(frozen=True)
class SynthSpec:
    rows: int = 100_000
    seed: int = 0
    max_cardinality: int = 100_000  # the widest categorical field; others shrink geometrically to ~4
    base_ctr: float = 0.25  # Criteo's click rate is about 25%
    signal: float = 1.0  # scales every ground-truth term; larger = easier data


def _cardinalities(spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    sizes = np.geomspace(4, spec.max_cardinality, len(CRITEO_CATEGORICAL)).astype(int)
    return rng.permutation(sizes)


def _zipf_ids(rng: np.random.Generator, n: int, cardinality: int, exponent: float) -> np.ndarray:
    """Token ids 0..cardinality-1 with P(k) proportional to 1/(k+1)^exponent (inverse-CDF sampling)."""
    weights = 1.0 / np.arange(1, cardinality + 1) ** exponent
    cdf = np.cumsum(weights)
    return np.searchsorted(cdf, rng.random(n) * cdf[-1]).astype(np.int64)


def _hash_tokens(field: int, cardinality: int) -> np.ndarray:
    """Criteo-like 8-hex-digit tokens, distinct within a field."""
    ids = np.arange(cardinality, dtype=np.uint64)
    mixed = (ids * np.uint64(2654435761) + np.uint64(field * 0x9E3779B1 + 12345)) & np.uint64(0xFFFFFFFF)
    return np.char.mod("%08x", mixed.astype(np.int64))


def generate(spec: SynthSpec) -> tuple[pd.DataFrame, np.ndarray]:
    """(frame with label, I1..I13, C1..C26; the true click probability of each row)."""
    rng = np.random.default_rng(spec.seed)
    n = spec.rows
    cards = _cardinalities(spec, rng)
    n_fields = len(CRITEO_NUMERIC) + len(CRITEO_CATEGORICAL)
    latent = np.empty((n_fields, n, LATENT_DIM))  # field-major: fast sums over fields
    first = np.zeros(n)
    columns: dict[str, object] = {}

    # numeric counts: log-normal-ish integers, some fields often missing; effect through log1p(count)
    for j, name in enumerate(CRITEO_NUMERIC):
        counts = np.floor(rng.lognormal(mean=rng.uniform(0, 3), sigma=rng.uniform(0.5, 1.5), size=n))
        missing = rng.random(n) < rng.choice([0.0, 0.05, 0.2, 0.45])
        x = np.log1p(counts)
        x = (x - x.mean()) / (x.std() + 1e-9)
        x[missing] = 0.0  # a missing count carries no signal
        field_vector = rng.normal(0, 0.5, LATENT_DIM)
        latent[j] = x[:, None] * field_vector
        first += rng.normal(0, 0.15) * x
        columns[name] = pd.array(np.where(missing, np.nan, counts), dtype="Int64")

    # categorical tokens: Zipf frequencies, a latent vector and a weight per token, some fields often missing
    for j, name in enumerate(CRITEO_CATEGORICAL):
        card = int(cards[j])
        ids = _zipf_ids(rng, n, card, exponent=rng.uniform(0.8, 1.2))
        missing = rng.random(n) < rng.choice([0.0, 0.0, 0.1, 0.3])
        informative = rng.random() < 0.7  # some fields are pure noise, as in real logs
        scale = 0.5 if informative else 0.0
        vectors = rng.normal(0, scale, (card, LATENT_DIM))
        weights = rng.normal(0, 0.3 if informative else 0.0, card)
        k = len(CRITEO_NUMERIC) + j
        latent[k] = vectors[ids]
        latent[k][missing] = 0.0
        first += np.where(missing, 0.0, weights[ids])
        tokens = pa.array(_hash_tokens(j, card), type=pa.string()).take(pa.array(ids, mask=missing))
        columns[name] = pd.Series(tokens, dtype=pd.ArrowDtype(pa.string()))

    # pairwise FM term by the sum-square identity, plus higher-order non-linear terms
    total = latent.sum(axis=0)
    pairwise = 0.5 * (np.square(total).sum(axis=1) - np.square(latent).sum(axis=0).sum(axis=1))
    mixing = rng.normal(0, 0.3, (n_fields, LATENT_DIM, 8))
    hidden = np.tanh(sum(latent[f] @ mixing[f] for f in range(n_fields)))
    nonlinear = hidden @ rng.normal(0, 0.6, 8)
    triples = rng.choice(n_fields, size=(6, 3), replace=False if n_fields >= 18 else True)
    nonlinear += sum(latent[a, :, 0] * latent[b, :, 0] * latent[c, :, 0] for a, b, c in triples) * 2.0
    logit = first + 0.5 * pairwise + nonlinear
    logit = spec.signal * LOGIT_STD * (logit - logit.mean()) / logit.std()

    # bias so that the mean click probability is base_ctr (bisection on a monotone function)
    lo, hi = -20.0, 20.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 / (1 + np.exp(-(logit + mid)))).mean() < spec.base_ctr else (lo, mid)
    probability = 1 / (1 + np.exp(-(logit + (lo + hi) / 2)))
    label = (rng.random(n) < probability).astype(np.int64)
    frame = pd.DataFrame({"label": label, **columns})
    return frame, probability


def bayes_metrics(labels: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """The AUC and logloss of the true probabilities: the best any model can expect on these labels."""
    auc, logloss = classification_metrics(np.asarray(labels, dtype=np.float64), probability)
    return {"bayes_auc": auc, "bayes_logloss": logloss}


def write_criteo_tsv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Criteo's layout: tab-separated, no header, empty fields for missing values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(include_header=False, delimiter="\t",
                                                                  quoting_style="none"))
    return path


def write_dataset(spec: SynthSpec, out_dir: str | Path, test_fraction: float = 0.1) -> dict[str, object]:
    """Write train.tsv and test.tsv (Criteo format) and truth.json (spec + Bayes-optimal test metrics)."""
    out_dir = Path(out_dir)
    frame, probability = generate(spec)
    n_test = max(1, int(round(len(frame) * test_fraction)))
    cut = len(frame) - n_test
    write_criteo_tsv(frame.iloc[:cut], out_dir / "train.tsv")
    write_criteo_tsv(frame.iloc[cut:], out_dir / "test.tsv")
    truth = {
        "rows": spec.rows, "seed": spec.seed, "max_cardinality": spec.max_cardinality, "base_ctr": spec.base_ctr,
        "signal": spec.signal, "train_rows": cut, "test_rows": n_test,
        "click_rate": float(frame["label"].mean()),
        **{f"test_{k}": v for k, v in bayes_metrics(frame["label"].to_numpy()[cut:], probability[cut:]).items()},
    }
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return truth
