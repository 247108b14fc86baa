"""The embedding optimizer: lazy Adam with the same update on every device, and no host sync on a GPU's path."""

import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode

from deepfm_tuner.model.config import PolicyConfig, TrainConfig
from deepfm_tuner.model.deepfm import DeepFM
from deepfm_tuner.model.optim import RowSparseAdam, make_optimizers

POLICY = PolicyConfig(embedding_dim=4, deep_hidden_units=(8,), dropout=0.0, learning_rate=0.01)
HOST_SYNCS = {"nonzero", "bincount", "equal", "item", "tolist", "unique", "__bool__", "__int__", "__float__",
              "masked_select", "unique_consecutive"}  # ops whose result the host must wait for on a GPU


def _batch(generator: torch.Generator, rows: int = 64):
    return (torch.randint(0, 3, (rows, 3), generator=generator), torch.randint(-1, 5, (rows, 2), generator=generator),
            torch.randn(rows, 2, generator=generator))


def _step(model: DeepFM, optimizers, batch) -> None:
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    embeddings, first = model.field_embeddings(*batch)
    (model.logits_from(embeddings, first).sigmoid().sum() + 1e-3 * embeddings.pow(2).sum()).backward()
    for optimizer in optimizers:
        optimizer.step()


@pytest.mark.parametrize("sync_free", [False, True])
def test_row_sparse_adam_matches_torch_sparse_adam(sync_free):
    """The fast embedding optimizer makes the same lazy-Adam update as torch.optim.SparseAdam, on both paths."""
    torch.manual_seed(0)
    ours, reference = torch.nn.Embedding(50, 4, sparse=True), torch.nn.Embedding(50, 4, sparse=True)
    reference.load_state_dict(ours.state_dict())
    fast = RowSparseAdam([ours.weight], lr=0.01, sync_free=sync_free)
    slow = torch.optim.SparseAdam(list(reference.parameters()), lr=0.01)
    for step in range(5):
        index = torch.randint(0, 50, (32, 3))  # repeated rows within a batch are summed
        for module, optimizer in ((ours, fast), (reference, slow)):
            optimizer.zero_grad()
            module(index).pow(2).sum().backward()
            optimizer.step()
    assert torch.allclose(ours.weight, reference.weight, atol=1e-6)


def test_the_gpu_optimizers_make_the_cpu_update_step_by_step():
    """`make_optimizers` for CUDA (forced here on a CPU model) is the CPU's lazy Adam, not a dense Adam over every
    row: each step leaves every parameter bit-for-bit where the CPU path leaves it, multi-valued field included."""
    torch.manual_seed(0)
    cpu_model = DeepFM([5, 7, 3], [6], [2], 2, POLICY)
    cuda_model = copy.deepcopy(cpu_model)
    control = TrainConfig(weight_decay=1e-4)
    cpu_optimizers = make_optimizers(cpu_model, POLICY, control, "cpu")
    cuda_optimizers = make_optimizers(cuda_model, POLICY, control, "cuda")
    assert [type(o) for o in cpu_optimizers] == [type(o) for o in cuda_optimizers]
    assert cuda_optimizers[1].sync_free and not cpu_optimizers[1].sync_free
    generator = torch.Generator().manual_seed(1)
    for step in range(12):
        batch = _batch(generator)
        _step(cpu_model, cpu_optimizers, batch)
        _step(cuda_model, cuda_optimizers, batch)
        for (name, a), (_, b) in zip(cpu_model.named_parameters(), cuda_model.named_parameters()):
            assert torch.equal(a, b), f"step {step}: {name} differs"


def test_rows_no_batch_looks_up_are_never_stepped():
    """Lazy Adam on the sync-free path: a row outside every batch keeps its weight (a dense Adam would move it by
    its momentum after the first step that touched it, and decay it through weight decay)."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(40, 3, sparse=True)
    optimizer = RowSparseAdam([table.weight], lr=0.1, sync_free=True)
    before = table.weight.detach().clone()
    table(torch.tensor([[0, 1, 1, 2]])).sum().backward()
    optimizer.step()
    for _ in range(3):  # later batches never touch row 0 again: its momentum must not move it
        optimizer.zero_grad()
        table(torch.tensor([[5, 6, 6]])).sum().backward()
        optimizer.step()
    after = table.weight.detach()
    moved = (after != before).any(1).nonzero().squeeze(1).tolist()
    assert moved == [0, 1, 2, 5, 6]
    first_step_row0 = before[0] - 0.1 * torch.sign(torch.ones(3))  # Adam's first step is lr * sign(grad)
    assert torch.allclose(after[0], first_step_row0, atol=1e-6)


class _Calls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_the_sync_free_step_reads_nothing_back_to_the_host():
    """On a GPU, `nonzero`, `bincount` (data-dependent sizes), `equal` and `.item()` make the host wait for every
    queued kernel each step; the sync-free step calls none of them (checked by recording every torch call)."""
    torch.manual_seed(0)
    model = DeepFM([5, 7, 3], [6], [2], 2, POLICY)
    optimizers = make_optimizers(model, POLICY, TrainConfig(), "cuda")
    batch = _batch(torch.Generator().manual_seed(2))
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    embeddings, first = model.field_embeddings(*batch)
    model.logits_from(embeddings, first).sum().backward()
    with _Calls() as calls:
        optimizers[1].step()
    assert calls.names and not calls.names & HOST_SYNCS, sorted(calls.names & HOST_SYNCS)
    with _Calls() as cpu_calls:  # the CPU path does use them: the check sees them
        RowSparseAdam([model.embedding.weight, model.first_order.weight], lr=0.01).step()
    assert {"bincount", "nonzero"} <= cpu_calls.names
