"""One readable training loop: shuffle indices, slice tensors, step; evaluate every epoch; stop early; keep the best.

The `on_epoch` hook sees each epoch's metrics; returning True stops training (a tuner may also raise from it,
e.g. to prune a trial). With `training.eval_every`, the `on_eval` hook also sees a fixed validation sample's
metrics every that fraction of an epoch (the epoch's end included), so a tuner can prune before an epoch ends;
the kept epoch is still chosen on the full validation split. Nothing here knows about Optuna or MLflow.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from deepfm_tuner.model.config import PolicyConfig, TrainConfig
from deepfm_tuner.model.data.tensors import (
    PreparedData,
    TensorData,
    available_memory,
    device_memory_budget,
    release_free_memory,
)
from deepfm_tuner.model.deepfm import TRAINING_COPIES, DeepFM, check_model_size, estimate_parameters
from deepfm_tuner.model.errors import ConfigError, TrainingDiverged
from deepfm_tuner.model.metrics import classification_metrics
from deepfm_tuner.model.optim import OPTIMIZER, make_optimizers

SELECT_METRICS = {"val_auc": 1, "val_logloss": -1}  # metric -> sign that makes higher better
NAN_CHECK_EVERY = 50  # steps between finite-loss checks (each one syncs a GPU)
EVAL_BATCH = 8192  # rows per evaluation forward: cache-sized, and no 100 MB activations


# -- the row order of each epoch: a full shuffle when the split fits in memory, else a block shuffle that touches
#    one block of a memory-mapped split at a time; sized by the memory this process can still use ----------------
SHUFFLE_BLOCK_BYTES = 256 << 20  # a block shuffle permutes rows inside ~256 MiB of inputs at a time


def shuffle_block_rows(data: TensorData, shuffle: str = "auto") -> int:
    """Rows per shuffle block: the whole split (a full shuffle) when it fits in half the memory left, else
    blocks of SHUFFLE_BLOCK_BYTES, so an epoch over a mapped split larger than memory touches one block's
    pages at a time instead of the whole file at random."""
    whole = len(data)
    if shuffle == "full" or (shuffle == "auto" and data.nbytes <= available_memory() // 2):
        return max(1, whole)
    return max(1, min(whole, SHUFFLE_BLOCK_BYTES // max(1, data.row_bytes)))


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, block_rows: int,
                  device: str = "cpu") -> Iterator[torch.Tensor]:
    """Row indices of each batch of one epoch, on `device`: every row exactly once. Blocks of `block_rows`
    consecutive rows are visited in random order and rows are permuted inside each block; with one block
    (block_rows >= n) this is a full shuffle, the same order as `torch.randperm(n)`. The permutation is drawn on
    the CPU (one order on every device) and copied to `device` once per epoch, or once per block: a step slices
    its indices where they are, and never waits on a host-to-device copy of them."""
    if block_rows >= n:
        yield from torch.randperm(n, generator=generator).to(device).split(batch_size)
        return
    n_blocks = -(-n // block_rows)
    carry = torch.empty(0, dtype=torch.long, device=device)
    for block in torch.randperm(n_blocks, generator=generator).tolist():
        start = block * block_rows
        rows = torch.randperm(min(block_rows, n - start), generator=generator).to(device) + start
        rows = torch.cat([carry, rows]) if len(carry) else rows
        full = len(rows) - len(rows) % batch_size
        if full:
            yield from rows[:full].split(batch_size)
        carry = rows[full:]
    if len(carry):
        yield carry


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 0-based, used as the MLflow step and the Optuna report step
    train_loss: float
    val_auc: float
    val_logloss: float
    seconds: float  # training time of the epoch (evaluation excluded)
    samples_per_second: float
    samples: int  # training rows processed by the end of this epoch, all epochs

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class StepMetrics:
    """One evaluation point on the fixed validation sample: every `training.eval_every` of an epoch, the epoch's
    end included (eval_every 0.25: 4 points per epoch, steps 0-3 in the first epoch, 4-7 in the second)."""

    step: int  # 0-based over the run: epoch * evals_per_epoch + point in the epoch (the tuner's report step)
    epoch: int  # 0-based epoch the point falls in
    epochs: float  # epochs of training done: samples / training rows (1.5: half-way through the second epoch)
    samples: int  # training rows processed so far, all epochs
    train_loss: float  # mean training loss over this epoch's rows so far
    val_auc: float  # on the validation sample, not the full split
    val_logloss: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class TrainResult:
    model: DeepFM
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = -1
    stop_reason: str = ""
    train_seconds: float = 0.0
    samples: int = 0  # training rows processed, all epochs (a stopped epoch's rows up to the stop included)
    kept: EpochMetrics | None = None  # with patience_steps: the kept evaluation point, scored on the full split

    @property
    def best(self) -> EpochMetrics:
        return self.kept or self.history[self.best_epoch]


class StepPatience:
    """`training.patience_steps`: stop after that many evaluations on the validation sample without a better
    score, keeping the weights of the best one (copied when it happens), so a curve that turns down mid-epoch
    stops there and its peak is what the run keeps, not the epoch's end."""

    def __init__(self, sign: int, metric: str, patience: int):
        self.sign, self.metric, self.patience = sign, metric, patience
        self.best_score, self.best, self.state, self.stale = -math.inf, None, None, 0

    def exhausted(self, point: StepMetrics, model: nn.Module) -> bool:
        score = self.sign * getattr(point, self.metric)
        if score > self.best_score:
            self.best_score, self.best, self.stale = score, point, 0
            self.state = copy.deepcopy(model.state_dict())
        else:
            self.stale += 1
        return self.stale >= self.patience


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return device


def training_setup(control: TrainConfig) -> dict[str, str]:
    """Where and how a run trains, recorded on every run: the resolved device and the optimizer (one update rule
    on every device, so trials of one study are comparable wherever they ran)."""
    return {"device": resolve_device(control.device), "optimizer": OPTIMIZER}


def device_placement(parameters: int, policy: PolicyConfig, train_bytes: int, val_bytes: int, budget: int,
                     device: str) -> tuple[bool, bool]:
    """Whether the train and the validation split are copied to `device`, given `budget` bytes of its memory.

    The training state comes first (TRAINING_COPIES float32 copies of the parameters: weights, gradients, Adam's
    two moments, the best-epoch copy), refused with a one-line ConfigError if it does not fit; then the train
    split, then the validation split, each copied when it fits in half of what is left (the other half is for
    activations and the allocator's slack). A split left on the host is gathered there, batch by batch."""
    check_model_size(parameters, policy, available=budget, device=device)
    left = budget - parameters * 4 * TRAINING_COPIES
    train_resident = train_bytes <= left // 2
    left -= train_bytes if train_resident else 0
    return train_resident, val_bytes <= left // 2


def placement(prepared: PreparedData, policy: PolicyConfig, device: str) -> tuple[bool, bool]:
    """Check, before allocating, that the model trains in the memory of `device` (the host's on the CPU, this
    process's budget of a GPU's), and say where the splits go (`device_placement`; the CPU uses them in place)."""
    enc = prepared.encoder
    parameters = estimate_parameters(enc.categorical_dims, enc.multivalued_dims, len(enc.schema.numeric), policy)
    if device == "cpu":
        check_model_size(parameters, policy)
        return True, True
    return device_placement(parameters, policy, prepared.train.nbytes, prepared.val.nbytes,
                            device_memory_budget(device), device)


def build_model(prepared: PreparedData, policy: PolicyConfig, device: str = "cpu") -> DeepFM:
    """The model, built on the host: there it holds every training copy on the CPU, only its weights (until they
    are moved) on a GPU, whose own memory `placement` checks."""
    enc = prepared.encoder
    return DeepFM(enc.categorical_dims, enc.multivalued_dims, enc.multivalued_lengths,
                  len(enc.schema.numeric), policy, memory_copies=TRAINING_COPIES if device == "cpu" else 1)


@torch.no_grad()
def predict_logits(model: DeepFM, data: TensorData, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(data), batch_size):
        stop = start + batch_size
        with torch.autocast(device.type, enabled=False):  # float32, as served: the kept epoch is chosen as scored
            logits = model(data.categorical[start:stop].to(device), data.multivalued[start:stop].to(device),
                           data.numeric[start:stop].to(device))
        out.append(logits.float())
    return torch.cat(out) if out else torch.empty(0, device=device)


def evaluate(model: DeepFM, data: TensorData, batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    logits = predict_logits(model, data, batch_size)
    if not torch.isfinite(logits).all():
        raise TrainingDiverged("the model's outputs are NaN or infinite; lower learning_rate or add weight_decay")
    return classification_metrics(data.labels.cpu().numpy(), torch.sigmoid(logits).cpu().numpy())


def validation_sample(val: TensorData, rows: int, seed: int) -> TensorData:
    """`rows` rows of the validation split drawn with `seed`, in split order: the same rows for every run on the
    same data and seed, so runs are compared on one sample; the whole split if it is not larger."""
    if len(val) <= rows:
        return val
    generator = torch.Generator(device="cpu").manual_seed(seed)  # its own: the training RNG streams are untouched
    return val.rows(torch.randperm(len(val), generator=generator)[:rows].sort().values)


def eval_rows(n: int, control: TrainConfig) -> list[int]:
    """Rows into an epoch of `n` rows after which the validation sample is evaluated: round(k * eval_every * n) for
    k = 1, 2, ... and n, the epoch's end. Row counts, not step counts, so runs with different batch sizes share
    their points (each is taken after the batch that reaches it)."""
    points = control.evals_per_epoch
    return [min(n, round(k * control.eval_every * n)) for k in range(1, points)] + [n]


def _diverged(train_loss: float, epoch: int, policy: PolicyConfig) -> TrainingDiverged:
    return TrainingDiverged(f"training loss became {train_loss} in epoch {epoch + 1}; lower learning_rate "
                            f"(now {policy.learning_rate}) or raise weight_decay")


def _autocast(device_type: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device_type == "cuda" else torch.autocast("cpu", enabled=False)


def train(
    prepared: PreparedData,
    policy: PolicyConfig,
    control: TrainConfig,
    on_epoch: Callable[[EpochMetrics], bool | None] | None = None,
    select: str = "val_auc",
    on_eval: Callable[[StepMetrics], bool | None] | None = None,
) -> TrainResult:
    """Train a DeepFM on `prepared.train`; keep the epoch with the best `select` metric (val_auc, higher is
    better; val_logloss, lower is better), which also drives early stopping; return it restored.

    `on_eval` (called only with `control.eval_every` set) sees each evaluation point on the validation sample;
    at an epoch's end it comes after `on_epoch`. Returning True stops training there: a stop mid-epoch ends that
    epoch early (evaluated on the full split, kept if best, passed to `on_epoch`). Evaluation changes nothing in
    training: the same seed gives the same epochs with or without it."""
    if select not in SELECT_METRICS:
        raise ValueError(f"select must be one of {', '.join(SELECT_METRICS)}, got {select!r}")
    sign = SELECT_METRICS[select]  # +1: higher is better
    # -- setup: seeds in one place, device, threads -----------------------------------------------
    release_free_memory()  # a frame the caller dropped must not stay resident under the training allocations
    torch.manual_seed(control.seed)
    if control.threads:
        torch.set_num_threads(control.threads)
    device = resolve_device(control.device)
    train_resident, val_resident = placement(prepared, policy, device)  # a model too large fails here, unallocated
    model = build_model(prepared, policy, device).to(device)
    click_rate = float(prepared.train.labels.mean().clamp(1e-4, 1 - 1e-4))
    with torch.no_grad():
        model.bias.fill_(math.log(click_rate / (1 - click_rate)))  # start at the base rate, not at 50%
    optimizers = make_optimizers(model, policy, control, device)
    loss_fn = nn.BCEWithLogitsLoss()
    if device == "cpu":
        train_data, val_data = prepared.train, prepared.val
    else:  # a split that fits is copied once, so no batch crosses the bus; else train batches come from the host
        # through pinned memory (None), and evaluation moves host slices itself
        train_data = prepared.train.to(device) if train_resident else None
        val_data = prepared.val.to(device) if val_resident else prepared.val
    block_rows = shuffle_block_rows(prepared.train, control.shuffle)
    generator = torch.Generator(device="cpu").manual_seed(control.seed)
    result = TrainResult(model=model)
    best_score, best_state, stale = -math.inf, None, 0
    n = len(prepared.train)
    # -- the sub-epoch evaluation points and the fixed validation sample (drawn once) ------------------------
    evaluated = on_eval is not None or control.patience_steps is not None
    points = eval_rows(n, control) if evaluated and control.eval_every is not None else []
    steps = StepPatience(sign, select, control.patience_steps) if points and control.patience_steps else None
    if points:
        sample = validation_sample(prepared.val, control.eval_sample_rows, control.seed)
        sample = val_data if sample is prepared.val else sample.to(device) if device != "cpu" else sample

    def evaluate_points(epoch: int, rows: int, samples: int, loss_sum: torch.Tensor, first: int,
                        last: int) -> int | None:
        """Evaluate the sample once and pass it to `on_eval` as points first..last-1 of the epoch (one batch may
        reach more than one); the step at which the hook asked to stop, else None."""
        train_loss = float(loss_sum) / rows
        if not math.isfinite(train_loss):
            raise _diverged(train_loss, epoch, policy)
        val_auc, val_logloss = evaluate(model, sample, control.eval_batch_size)  # no_grad, model.eval(): no RNG
        model.train()
        for step in range(epoch * len(points) + first, epoch * len(points) + last):
            point = StepMetrics(step, epoch, samples / n, samples, train_loss, val_auc, val_logloss)
            if on_eval is not None and on_eval(point):
                return step
        return step if steps is not None and steps.exhausted(point, model) else None

    for epoch in range(control.max_epochs):
        # -- one pass over shuffled rows ------------------------------------------------------------
        model.train()
        started = time.perf_counter()
        eval_seconds, rows, done, stop_at = 0.0, 0, 0, None  # done: points of this epoch evaluated
        loss_sum = torch.zeros((), device=device)
        batches = epoch_batches(n, control.batch_size, generator, block_rows,
                                device if train_data is not None else "cpu")  # indices where the rows are
        for step, index in enumerate(batches):
            if train_data is not None:
                batch = train_data.rows(index)
            else:  # gathered on the host while the GPU runs the previous step (CUDA calls return at once)
                batch = prepared.train.rows(index).pin_memory().to(device, non_blocking=True)
            with _autocast(device):
                embeddings, first = model.field_embeddings(batch.categorical, batch.multivalued, batch.numeric)
                logits = model.logits_from(embeddings, first)
            loss = loss_fn(logits.float(), batch.labels)
            objective = loss + control.embedding_l2 * embeddings.float().pow(2).sum() / len(logits) if control.embedding_l2 > 0 else loss
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            objective.backward()
            for optimizer in optimizers:
                optimizer.step()
            loss_sum += loss.detach() * len(logits)
            rows += len(logits)
            if step % NAN_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                break
            # -- sub-epoch evaluation on the sample (the epoch's end point comes after the full evaluation) ---
            reached = done
            while reached < len(points) - 1 and rows >= points[reached]:
                reached += 1
            if reached > done:
                if device == "cuda":
                    torch.cuda.synchronize()  # the queued steps are training time, not evaluation time
                began = time.perf_counter()
                stop_at = evaluate_points(epoch, rows, result.samples + rows, loss_sum, done, reached)
                eval_seconds += time.perf_counter() - began
                done = reached
                if stop_at is not None:
                    break
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started - eval_seconds
        result.train_seconds += seconds
        result.samples += rows
        train_loss = float(loss_sum) / rows
        if not math.isfinite(train_loss):
            raise _diverged(train_loss, epoch, policy)

        # -- evaluate, remember the best epoch ----------------------------------------------------------
        val_auc, val_logloss = evaluate(model, val_data, control.eval_batch_size)
        metrics = EpochMetrics(epoch, train_loss, val_auc, val_logloss, seconds, rows / seconds, result.samples)
        result.history.append(metrics)
        score = sign * getattr(metrics, select)
        if score > best_score or best_state is None:
            best_score, stale, result.best_epoch = score, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1

        # -- hooks and stopping ------------------------------------------------------------------------
        stop_epoch = on_epoch is not None and on_epoch(metrics)
        if points and stop_at is None:
            stop_at = evaluate_points(epoch, rows, result.samples, loss_sum, done, len(points))
        if stop_at is not None and steps is not None and steps.stale >= steps.patience:
            result.stop_reason = (f"early stop: no better {select} on the validation sample for {steps.stale} "
                                  f"evaluations (best at {steps.best.epochs:.2f} epochs)")
            break
        if stop_at is not None:
            result.stop_reason = (f"stopped by callback at step {stop_at} "
                                  f"({result.samples / n:.2f} epochs)")
            break
        if stop_epoch:
            result.stop_reason = f"stopped by callback after epoch {epoch + 1}"
            break
        if control.patience and stale >= control.patience:  # patience 0: no early stopping
            result.stop_reason = f"early stop: no better {select} for {stale} epochs"
            break
    else:
        result.stop_reason = f"reached max_epochs={control.max_epochs}"

    if steps is not None and steps.state is not None:  # the best evaluation point, scored on the full split
        model.load_state_dict(steps.state)
        kept, epoch_of = steps.best, result.history[steps.best.epoch]
        result.best_epoch = kept.epoch
        result.kept = EpochMetrics(kept.epoch, kept.train_loss, *evaluate(model, val_data, control.eval_batch_size),
                                   epoch_of.seconds, epoch_of.samples_per_second, kept.samples)
    else:
        model.load_state_dict(best_state)
    model.embedding.sparse = model.first_order.sparse = False  # a plain module again for whoever uses it next
    model.eval()
    return result
