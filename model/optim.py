"""The optimizers of a training run: fused Adam for the dense parameters and a row-sparse (lazy) Adam for the
embedding tables (a batch looks up a few percent of their rows; a dense step would touch them all), on every device."""

from __future__ import annotations

import math

import torch
from torch import nn

from deepfm_tuner.model.config import PolicyConfig, TrainConfig
from deepfm_tuner.model.deepfm import DeepFM


class RowSparseAdam:
    """Adam for the embedding tables that updates only the rows a batch looked up ("lazy" Adam, as torch's
    SparseAdam), for tables trained with sparse gradients (`nn.Embedding.sparse = True`); the same update on every
    device, so a study's trials are comparable wherever they ran and a GPU champion is reproduced on a CPU.

    A dense step would touch every row of every table (and a dense gradient would zero-fill them all) though a
    batch uses a few percent of them. Unlike SparseAdam it never coalesces: each gradient is summed per touched row
    with one `index_add_` into a compact (rows, width) buffer, and all tables (which share one row layout and, in
    DeepFM, one lookup index) are updated on the same rows. Steps count globally, like SparseAdam's.

    How the touched rows are found differs, not what is computed. On the CPU (`sync_free=False`): a bincount of the
    lookups, then `nonzero` (exactly the touched rows). On a GPU both would wait for the device every step (their
    output size is data-dependent), so `sync_free=True` sorts the lookups instead and works on a fixed number of
    slots, one per lookup: the first slots hold the distinct rows, the rest point at a scratch row of the state
    and add an exact zero to the weights. Nothing is read back to the host.
    """

    def __init__(self, tables: list[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, sync_free: bool = False):
        if len({t.shape[0] for t in tables}) != 1:
            raise ValueError("RowSparseAdam needs tables with the same number of rows")
        self.tables, self.lr, self.betas, self.eps, self.sync_free = tables, lr, betas, eps, sync_free
        self.rows = tables[0].shape[0]
        # one more row than the tables: the scratch row the unused slots of a sync-free step write to
        self.exp_avg = [t.new_zeros((self.rows + 1, *t.shape[1:])) for t in tables]
        self.exp_avg_sq = [t.new_zeros((self.rows + 1, *t.shape[1:])) for t in tables]
        self.position = torch.zeros(self.rows, dtype=torch.long, device=tables[0].device)
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

    def _touched(self, lookups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(slots: the rows to update, position: each lookup's slot, used: which slots hold a real row, or None
        when all do)."""
        if not self.sync_free:
            rows = torch.bincount(lookups, minlength=self.rows).nonzero().squeeze(1)
            self.position[rows] = torch.arange(len(rows), device=rows.device)
            return rows, self.position[lookups], None
        ordered, order = torch.sort(lookups, stable=True)
        first = torch.ones_like(ordered, dtype=torch.bool)
        first[1:] = ordered[1:] != ordered[:-1]
        slot = torch.cumsum(first, 0) - 1  # the slot of each sorted lookup: distinct rows fill the first slots
        slots = torch.full_like(lookups, self.rows).scatter_(0, slot, ordered)  # unused slots: the scratch row
        position = torch.empty_like(slot).scatter_(0, order, slot)
        return slots, position, slots < self.rows

    @staticmethod
    def _same_lookups(a: torch.Tensor, b: torch.Tensor) -> bool:
        """Whether two tables were looked up with the same index. DeepFM's share one tensor (same storage); the
        element-wise check is a device sync, so a sync-free step never makes it."""
        return a is b or (a.shape == b.shape and (a.data_ptr() == b.data_ptr() and a.stride() == b.stride()))

    @torch.no_grad()
    def step(self) -> None:
        live = [(i, *self._rows_and_values(t)) for i, t in enumerate(self.tables) if t.grad is not None]
        if not live:
            return
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.steps)
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.steps)
        # -- the touched rows (shared by all tables) and each lookup's slot among them -----------------------
        first = live[0][1]
        same = all(self._same_lookups(idx, first) or (not self.sync_free and idx.shape == first.shape
                                                      and torch.equal(idx, first)) for _, idx, _ in live[1:])
        groups = [live] if same else [[table] for table in live]  # tables looked up differently: one at a time
        for group in groups:
            slots, position, used = self._touched(group[0][1])
            for i, _, values in group:
                self._update(i, slots, position, used, values, step_size, bias_correction2_sqrt)

    def _update(self, i: int, slots: torch.Tensor, position: torch.Tensor, used: torch.Tensor | None,
                values: torch.Tensor, step_size: float, bias_correction2_sqrt: float) -> None:
        """Adam on the slots' rows of table i."""
        beta1, beta2 = self.betas
        table, exp_avg, exp_avg_sq = self.tables[i], self.exp_avg[i], self.exp_avg_sq[i]
        grad = torch.zeros((len(slots), table.shape[1]), dtype=values.dtype, device=values.device)
        grad.index_add_(0, position, values)
        m = exp_avg.index_select(0, slots).mul_(beta1).add_(grad, alpha=1 - beta1)
        v = exp_avg_sq.index_select(0, slots).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        exp_avg.index_copy_(0, slots, m)
        exp_avg_sq.index_copy_(0, slots, v)
        denominator = v.sqrt_().div_(bias_correction2_sqrt).add_(self.eps)
        if used is None:
            table.index_copy_(0, slots, table.index_select(0, slots).addcdiv_(m, denominator, value=-step_size))
        else:  # unused slots (the scratch row, clamped onto a real one) add an exact zero: no write conflicts
            change = m.mul_(-step_size).div_(denominator).mul_(used.unsqueeze(1))
            table.index_add_(0, slots.clamp(max=self.rows - 1), change)


OPTIMIZER = "adam+lazy_adam"  # recorded on every run: fused Adam (MLP, bias), lazy row-sparse Adam (embeddings)


def make_optimizers(model: DeepFM, policy: PolicyConfig, control: TrainConfig, device: str) -> list:
    """Fused Adam for the MLP and bias, row-sparse (lazy) Adam for the two embedding tables, switched to sparse
    gradients (`train` switches them back): the same update on every device, sync-free off the CPU."""
    tables = [model.embedding, model.first_order]
    for table in tables:
        table.sparse = True
    ids = {id(t.weight) for t in tables}
    dense = [p for n, p in model.named_parameters() if n.startswith("mlp.")]
    other = [p for n, p in model.named_parameters() if not n.startswith("mlp.") and id(p) not in ids]
    groups = [{"params": dense, "weight_decay": control.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return [torch.optim.Adam(groups, lr=policy.learning_rate, fused=True),
            RowSparseAdam([t.weight for t in tables], lr=policy.learning_rate, sync_free=device != "cpu")]
