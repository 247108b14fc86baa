"""The optimizers of a training run: fused Adam for dense parameters and, on the CPU, a row-sparse Adam for the
embedding tables (a batch looks up a few percent of their rows; a dense step would touch them all)."""

from __future__ import annotations

import math

import torch
from torch import nn

from deepfm_tuner.model.config import PolicyConfig, TrainConfig
from deepfm_tuner.model.deepfm import DeepFM


def make_optimizer(model: DeepFM, policy: PolicyConfig, control: TrainConfig, device: str) -> torch.optim.Optimizer:
    """Adam; weight decay on the MLP only (embeddings have their own per-batch L2)."""
    dense = [p for n, p in model.named_parameters() if n.startswith("mlp.")]
    other = [p for n, p in model.named_parameters() if not n.startswith("mlp.")]
    groups = [{"params": dense, "weight_decay": control.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.Adam(groups, lr=policy.learning_rate, fused=True)


class RowSparseAdam:
    """Adam for the embedding tables that updates only the rows a batch looked up ("lazy" Adam, as torch's
    SparseAdam), for tables trained with sparse gradients (`nn.Embedding.sparse = True`).

    A dense step would touch every row of every table (and a dense gradient would zero-fill them all) though a
    batch uses a few percent of them. Unlike SparseAdam it never sorts or coalesces: the touched rows come from a
    bincount of the uncoalesced gradient's indices, each gradient is summed per touched row with one `index_add_`
    into a compact (rows, width) buffer, and all tables (which share one row layout and, in DeepFM, one lookup
    index) are updated on the same rows. Steps count globally, like SparseAdam's.
    """

    def __init__(self, tables: list[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        if len({t.shape[0] for t in tables}) != 1:
            raise ValueError("RowSparseAdam needs tables with the same number of rows")
        self.tables, self.lr, self.betas, self.eps = tables, lr, betas, eps
        self.exp_avg = [torch.zeros_like(t) for t in tables]
        self.exp_avg_sq = [torch.zeros_like(t) for t in tables]
        self.position = torch.zeros(tables[0].shape[0], dtype=torch.long, device=tables[0].device)
        self.steps = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        for table in self.tables:
            table.grad = None

    @staticmethod
    def _rows_and_values(table: nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
        grad = table.grad
        if grad.is_sparse:
            return grad._indices()[0], grad._values()
        return torch.arange(len(grad), device=grad.device), grad  # a dense gradient: every row

    @torch.no_grad()
    def step(self) -> None:
        live = [(i, *self._rows_and_values(t)) for i, t in enumerate(self.tables) if t.grad is not None]
        if not live:
            return
        # -- the touched rows (shared by all tables) and each lookup's position among them -----------------
        first = live[0][1]
        same = all(idx is first or (idx.shape == first.shape and torch.equal(idx, first)) for _, idx, _ in live[1:])
        touched = first if same else torch.cat([idx for _, idx, _ in live])
        rows = torch.bincount(touched, minlength=len(self.position)).nonzero().squeeze(1)
        self.position[rows] = torch.arange(len(rows), device=rows.device)
        # -- Adam on those rows only -----------------------------------------------------------------------
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.steps)
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.steps)
        shared_position = self.position[first] if same else None
        for i, idx, values in live:
            table, exp_avg, exp_avg_sq = self.tables[i], self.exp_avg[i], self.exp_avg_sq[i]
            grad = torch.zeros((len(rows), table.shape[1]), dtype=values.dtype, device=values.device)
            grad.index_add_(0, self.position[idx] if shared_position is None else shared_position, values)
            m = exp_avg.index_select(0, rows).mul_(beta1).add_(grad, alpha=1 - beta1)
            v = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            exp_avg.index_copy_(0, rows, m)
            exp_avg_sq.index_copy_(0, rows, v)
            weights = table.index_select(0, rows).addcdiv_(m, v.sqrt_().div_(bias_correction2_sqrt).add_(self.eps),
                                                          value=-step_size)
            table.index_copy_(0, rows, weights)


def make_optimizers(model: DeepFM, policy: PolicyConfig, control: TrainConfig, device: str) -> list:
    """On CPU: fused Adam for the MLP and bias, row-sparse Adam for the two embedding tables (switched to sparse
    gradients; `train` switches them back). On CUDA a dense fused step over every table is cheap: one Adam."""
    if device != "cpu":
        return [make_optimizer(model, policy, control, device)]
    tables = [model.embedding, model.first_order]
    for table in tables:
        table.sparse = True
    ids = {id(t.weight) for t in tables}
    dense = [p for n, p in model.named_parameters() if n.startswith("mlp.")]
    other = [p for n, p in model.named_parameters() if not n.startswith("mlp.") and id(p) not in ids]
    groups = [{"params": dense, "weight_decay": control.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return [torch.optim.Adam(groups, lr=policy.learning_rate, fused=True),
            RowSparseAdam([t.weight for t in tables], lr=policy.learning_rate)]
