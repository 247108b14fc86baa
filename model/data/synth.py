"""Criteo-format synthetic CTR data with a known click probability, hence a known best achievable AUC/logloss.

Ground truth: logit = bias + first-order weights + FM pairwise terms <v_i, v_j> over a latent vector per
token (numeric fields: log-count x field vector) + non-linear higher-order terms (a small random tanh network
over the latent vectors and three-way products). Tokens follow Zipf-like frequencies and values go missing at
per-field rates, as in the real data. Labels ~ Bernoulli(sigmoid(logit)), so scoring the test split with the true
probability gives the Bayes-optimal AUC and logloss: no model can beat them in expectation.

Rows are made in chunks so memory does not grow with the row count (real logs have 10M-4B rows). Everything
shared by all rows (parameters, scalings, bias) is fixed first from the seed and a fixed calibration sample;
each block of BLOCK_ROWS rows then draws its noise from its own stream, so the output depends on the seed only,
never on the chunk size.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from deepfm_tuner.model.data.schema import CRITEO_CATEGORICAL, CRITEO_NUMERIC
from deepfm_tuner.model.errors import DataError
from deepfm_tuner.model.filelock import file_lock
from deepfm_tuner.model.metrics import classification_metrics

LATENT_DIM = 4
HIDDEN = 8  # width of the random tanh layer behind the non-linear terms
LOGIT_STD = 1.4  # spread of the true logit at signal=1: a best achievable AUC near 0.80, like Criteo
BLOCK_ROWS = 1_000  # rows per random stream (seed, block): the unit that makes chunking invisible
CHUNK_ROWS = 250_000  # rows held in memory at once; a multiple of BLOCK_ROWS
CALIBRATION_ROWS = 100_000  # fixed sample that sets the scalings and the bias for data sets of any size
N_NUM, N_CAT = len(CRITEO_NUMERIC), len(CRITEO_CATEGORICAL)
FILES = ("train.tsv", "test.tsv", "truth.json")
TSV = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
SCHEMA = pa.schema([("label", pa.int64())] + [(n, pa.int64()) for n in CRITEO_NUMERIC]
                   + [(n, pa.string()) for n in CRITEO_CATEGORICAL])


@dataclass(frozen=True)
class SynthSpec:
    rows: int = 100_000
    seed: int = 0
    max_cardinality: int = 100_000  # the widest categorical field; others shrink geometrically to ~4
    base_ctr: float = 0.25  # Criteo's click rate is about 25%
    signal: float = 1.0  # scales every ground-truth term; larger = easier data


# Every quantity the logit sums over fields, per field value: first-order weight, latent vector v, |v|^2 (for the
# FM sum-square identity) and v @ mixing (the input of the tanh layer). A row's logit needs one gather per field.
LATENT = slice(1, 1 + LATENT_DIM)
SQUARE = 1 + LATENT_DIM
MIXED = slice(2 + LATENT_DIM, 2 + LATENT_DIM + HIDDEN)
TERMS = 2 + LATENT_DIM + HIDDEN


@dataclass
class _Numeric:
    mean: float  # counts ~ floor(lognormal(mean, sigma))
    sigma: float
    missing: float  # missing rate
    terms: np.ndarray  # (TERMS,) of the field vector; a row's terms scale with its standardised log count
    center: float = 0.0  # log1p(count) standardisation, set by calibration
    scale: float = 1.0

    def counts(self, normal: np.ndarray) -> np.ndarray:
        return np.floor(np.exp(self.mean + self.sigma * normal))


@dataclass
class _Categorical:
    cdf: np.ndarray  # unnormalised Zipf CDF over token ids
    missing: float
    terms: np.ndarray  # (cardinality + 1, TERMS) per token; the last row, all zero, is "missing"
    tokens: pa.Array  # the token strings written to the file


@dataclass
class _Params:
    """Everything shared by all rows of one data set: drawn from the seed, then calibrated."""

    numeric: list[_Numeric]
    categorical: list[_Categorical]
    readout: np.ndarray  # (HIDDEN,) weights of the tanh layer's outputs
    triples: np.ndarray  # (6, 3) field indices of the three-way products of the first latent coordinate
    center: float = 0.0  # logit = scale * (raw - center) + bias
    scale: float = 1.0
    bias: float = 0.0


def _terms(weights: np.ndarray, vectors: np.ndarray, mixing: np.ndarray) -> np.ndarray:
    return np.column_stack([weights, vectors, np.square(vectors).sum(axis=1), vectors @ mixing])


def _stream(seed: int, *key: int) -> np.random.Generator:
    """An independent random stream per purpose: (0,) parameters, (1,) calibration, (2, block) rows."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _cardinalities(spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    sizes = np.geomspace(4, spec.max_cardinality, N_CAT).astype(int)
    return rng.permutation(sizes)


def _zipf_cdf(cardinality: int, exponent: float) -> np.ndarray:
    """P(k) proportional to 1/(k+1)^exponent, as an unnormalised CDF for inverse-CDF sampling."""
    return np.cumsum(1.0 / np.arange(1, cardinality + 1) ** exponent)


def _zipf_ids(rng: np.random.Generator, n: int, cardinality: int, exponent: float) -> np.ndarray:
    """Token ids 0..cardinality-1 with Zipf frequencies (kept for bench/gpu_check.py)."""
    cdf = _zipf_cdf(cardinality, exponent)
    return np.searchsorted(cdf, rng.random(n) * cdf[-1]).astype(np.int64)


def _hash_tokens(field: int, cardinality: int) -> np.ndarray:
    """Criteo-like 8-hex-digit tokens, distinct within a field."""
    ids = np.arange(cardinality, dtype=np.uint64)
    mixed = (ids * np.uint64(2654435761) + np.uint64(field * 0x9E3779B1 + 12345)) & np.uint64(0xFFFFFFFF)
    return np.char.mod("%08x", mixed.astype(np.int64))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _draw_params(spec: SynthSpec) -> _Params:
    rng = _stream(spec.seed, 0)
    mixing = rng.normal(0, 0.3, (N_NUM + N_CAT, LATENT_DIM, HIDDEN))
    readout = rng.normal(0, 0.6, HIDDEN)
    triples = rng.choice(N_NUM + N_CAT, size=(6, 3), replace=False)
    numeric = []
    for j in range(N_NUM):
        mean, sigma, missing = rng.uniform(0, 3), rng.uniform(0.5, 1.5), rng.choice([0.0, 0.05, 0.2, 0.45])
        terms = _terms(rng.normal(0, 0.15, 1), rng.normal(0, 0.5, (1, LATENT_DIM)), mixing[j])[0]
        numeric.append(_Numeric(mean, sigma, missing, terms))
    categorical = []
    for j, card in enumerate(map(int, _cardinalities(spec, rng))):
        scale = 1.0 if rng.random() < 0.7 else 0.0  # some fields are pure noise, as in real logs
        cdf, missing = _zipf_cdf(card, rng.uniform(0.8, 1.2)), rng.choice([0.0, 0.0, 0.1, 0.3])
        weights, vectors = rng.normal(0, 0.3 * scale, card), rng.normal(0, 0.5 * scale, (card, LATENT_DIM))
        terms = _terms(weights, vectors, mixing[N_NUM + j])
        tokens = pa.array(_hash_tokens(j, card), type=pa.string())
        categorical.append(_Categorical(cdf, missing, np.vstack([terms, np.zeros(TERMS)]), tokens))
    return _Params(numeric, categorical, readout, triples)


def _noise(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(normals for the 13 counts; uniforms for 13 numeric missing flags, 26 token draws, 26 categorical missing
    flags and the click), field-major so that each field's values are contiguous."""
    return rng.standard_normal((N_NUM, n)), rng.random((N_NUM + 2 * N_CAT + 1, n))


def _row_noise(seed: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """The noise of rows start..stop (start a multiple of BLOCK_ROWS), one stream per block of rows."""
    normal, uniform = np.empty((N_NUM, stop - start)), np.empty((N_NUM + 2 * N_CAT + 1, stop - start))
    for a in range(start, stop, BLOCK_ROWS):
        b = min(a + BLOCK_ROWS, stop)
        rows = slice(a - start, b - start)
        normal[:, rows], uniform[:, rows] = _noise(_stream(seed, 2, a // BLOCK_ROWS), b - a)
    return normal, uniform


def _raw_logit(params: _Params, normal: np.ndarray, uniform: np.ndarray, columns: dict | None = None) -> np.ndarray:
    """The raw logit of the rows behind this noise; fills `columns` (if given) with their Arrow columns I1..I13,
    C1..C26. Sums the fields' terms: memory is TERMS floats per row, not fields x rows x LATENT_DIM."""
    n = normal.shape[1]
    total = np.zeros((n, TERMS))
    needed = set(params.triples.ravel().tolist())
    leading = {}  # first latent coordinate of the fields in the three-way products
    for j, (name, f) in enumerate(zip(CRITEO_NUMERIC, params.numeric)):
        counts, missing = f.counts(normal[j]), uniform[j] < f.missing
        x = np.where(missing, 0.0, (np.log1p(counts) - f.center) / f.scale)  # a missing count carries no signal
        terms = np.outer(x, f.terms)  # linear in x ...
        terms[:, SQUARE] *= x  # ... but for the squared norm
        total += terms
        if j in needed:
            leading[j] = terms[:, LATENT.start].copy()
        if columns is not None:
            columns[name] = pa.array(counts.astype(np.int64), mask=missing)
    for j, (name, f) in enumerate(zip(CRITEO_CATEGORICAL, params.categorical)):
        ids = np.searchsorted(f.cdf, uniform[N_NUM + j] * f.cdf[-1])
        missing = uniform[N_NUM + N_CAT + j] < f.missing
        terms = f.terms[np.where(missing, len(f.cdf), ids)]
        total += terms
        if N_NUM + j in needed:
            leading[N_NUM + j] = terms[:, LATENT.start].copy()
        if columns is not None:
            columns[name] = f.tokens.take(pa.array(ids, mask=missing))

    pairwise = 0.5 * (np.square(total[:, LATENT]).sum(axis=1) - total[:, SQUARE])  # FM sum-square identity
    nonlinear = np.tanh(total[:, MIXED]) @ params.readout
    nonlinear += sum(leading[a] * leading[b] * leading[c] for a, b, c in params.triples) * 2.0
    return total[:, 0] + 0.5 * pairwise + nonlinear


def _calibrate(params: _Params, spec: SynthSpec) -> None:
    """Set what needs data (log-count standardisation, logit spread, and the bias that makes the mean click
    probability base_ctr) once, on a fixed sample from its own stream: every chunk shares them."""
    normal, uniform = _noise(_stream(spec.seed, 1), CALIBRATION_ROWS)
    for j, f in enumerate(params.numeric):
        x = np.log1p(f.counts(normal[j]))
        f.center, f.scale = float(x.mean()), float(x.std() + 1e-9)
    raw = _raw_logit(params, normal, uniform)
    params.center, params.scale = float(raw.mean()), spec.signal * LOGIT_STD / float(raw.std())
    logit = params.scale * (raw - params.center)
    lo, hi = -20.0, 20.0  # bisection on a monotone function
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(logit + mid).mean() < spec.base_ctr else (lo, mid)
    params.bias = (lo + hi) / 2


def chunks(spec: SynthSpec, chunk_size: int = CHUNK_ROWS) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """The data set in order, as (Arrow table label, I1..I13, C1..C26; true click probability) per chunk.
    Peak memory grows with chunk_size and the cardinalities, not with spec.rows."""
    if chunk_size <= 0 or chunk_size % BLOCK_ROWS:
        raise ValueError(f"chunk_size must be a positive multiple of {BLOCK_ROWS}, got {chunk_size}")
    params = _draw_params(spec)
    _calibrate(params, spec)
    for start in range(0, spec.rows, chunk_size):
        yield _chunk(params, spec.seed, start, min(start + chunk_size, spec.rows))


def _chunk(params: _Params, seed: int, start: int, stop: int) -> tuple[pa.Table, np.ndarray]:
    """Rows start..stop; a function so that its noise and intermediates are freed before the next chunk."""
    normal, uniform = _row_noise(seed, start, stop)
    columns: dict[str, pa.Array] = {}
    probability = _sigmoid(params.scale * (_raw_logit(params, normal, uniform, columns) - params.center) + params.bias)
    label = (uniform[-1] < probability).astype(np.int64)
    return pa.table({"label": label, **columns}, schema=SCHEMA), probability


def generate(spec: SynthSpec, *, chunk_size: int = CHUNK_ROWS) -> tuple[pd.DataFrame, np.ndarray]:
    """(frame with label, I1..I13, C1..C26; the true click probability of each row), all in memory: for small
    sets. Large ones: `write_dataset` or `chunks`."""
    tables, probabilities = zip(*chunks(spec, chunk_size))
    mapper = {pa.int64(): pd.Int64Dtype(), pa.string(): pd.ArrowDtype(pa.string())}.get
    frame = pa.concat_tables(tables).to_pandas(types_mapper=mapper)
    frame["label"] = frame["label"].astype(np.int64)
    return frame, np.concatenate(probabilities)


def bayes_metrics(labels: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """The AUC and logloss of the true probabilities: the best any model can expect on these labels."""
    auc, logloss = classification_metrics(np.asarray(labels, dtype=np.float64), probability)
    return {"bayes_auc": auc, "bayes_logloss": logloss}


def write_criteo_tsv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Criteo's layout: tab-separated, no header, empty fields for missing values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), path, write_options=TSV)
    return path


def _n_test(rows: int, test_fraction: float) -> int:
    """Rows in the test split: the last ones."""
    return max(1, int(round(rows * test_fraction)))


def read_truth(out_dir: str | Path) -> dict[str, object] | None:
    """truth.json of a complete data set folder, else None (it is written last)."""
    path = Path(out_dir) / "truth.json"
    return json.loads(path.read_text()) if path.is_file() else None


def differences(truth: dict[str, object], spec: SynthSpec, test_fraction: float) -> list[str]:
    """How a written data set's truth differs from the one asked for, e.g. ['rows 1000 there, 2000 asked']."""
    diffs = [f"{key} {truth.get(key)!r} there, {value!r} asked" for key, value in dataclasses.asdict(spec).items()
             if truth.get(key) != value]
    n_test = _n_test(spec.rows, test_fraction)
    if not diffs and truth.get("test_rows") != n_test:  # the same rows, another test_fraction
        diffs.append(f"test_rows {truth.get('test_rows')!r} there, {n_test} asked")
    return diffs


def _write_files(spec: SynthSpec, folder: Path, test_fraction: float, chunk_size: int) -> dict[str, object]:
    """Stream the chunks into folder/train.tsv and test.tsv (the last rows); keep only the test probabilities."""
    n_test = _n_test(spec.rows, test_fraction)
    cut = spec.rows - n_test
    clicks, test_labels, test_probability, start = 0, [], [], 0
    # Python file objects own the descriptors: they close even when a full disk makes Arrow's close fail
    with open(folder / "train.tsv", "wb") as train_file, open(folder / "test.tsv", "wb") as test_file, \
            pacsv.CSVWriter(train_file, SCHEMA, write_options=TSV) as train, \
            pacsv.CSVWriter(test_file, SCHEMA, write_options=TSV) as test:
        for table, probability in chunks(spec, chunk_size):
            split = min(max(cut - start, 0), len(table))
            if split:
                train.write_table(table.slice(0, split))
            if split < len(table):
                test.write_table(table.slice(split))
                test_labels.append(table["label"].to_numpy()[split:])
                test_probability.append(probability[split:])
            clicks += int(table["label"].to_numpy().sum())
            start += len(table)
            del table, probability  # before the next chunk is made: one chunk in memory at a time
    truth = {
        "rows": spec.rows, "seed": spec.seed, "max_cardinality": spec.max_cardinality, "base_ctr": spec.base_ctr,
        "signal": spec.signal, "train_rows": cut, "test_rows": n_test, "click_rate": clicks / spec.rows,
        **{f"test_{k}": v for k, v in bayes_metrics(np.concatenate(test_labels),
                                                   np.concatenate(test_probability)).items()},
    }
    (folder / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return truth


def write_dataset(spec: SynthSpec, out_dir: str | Path, test_fraction: float = 0.1, *, overwrite: bool = False,
                  chunk_size: int = CHUNK_ROWS) -> dict[str, object]:
    """Write train.tsv and test.tsv (Criteo format) and truth.json (spec + Bayes-optimal test metrics).

    Safe with concurrent callers (e.g. the workers of one study): they serialise on `<out_dir>.lock`; the first
    writes into `<out_dir>.tmp-<pid>-<random>` and renames it into place when complete, the others then find
    truth.json and return it. A complete folder is reused unless `overwrite`; one of a different spec is an error.
    A folder without truth.json (an interrupted old-style write) is replaced."""
    shown, out_dir = out_dir, Path(os.path.abspath(out_dir))  # absolute: "." has no name to put .lock after
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out_dir.with_name(out_dir.name + ".lock")):
        truth = None if overwrite else read_truth(out_dir)
        if truth is not None:
            if diffs := differences(truth, spec, test_fraction):
                raise DataError(f"{shown} already holds a different synthetic data set ({'; '.join(diffs)}); "
                                f"delete it or write to another folder (--out, data.cache_dir)")
            return truth
        if out_dir.exists() and not set(os.listdir(out_dir)) <= set(FILES):
            raise DataError(f"{shown} exists and holds other files than {', '.join(FILES)}; "
                            f"choose another folder for the synthetic data")
        for stale in glob.glob(glob.escape(str(out_dir)) + ".tmp-*"):  # left by killed writers (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        tmp.mkdir()
        try:
            truth = _write_files(spec, tmp, test_fraction, chunk_size)
            if out_dir.exists():  # rename() cannot replace a non-empty folder: move the old one aside, then swap
                old = tmp.with_name(tmp.name + "-old")
                out_dir.rename(old)
                tmp.rename(out_dir)
                shutil.rmtree(old)
            else:
                tmp.rename(out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return truth
