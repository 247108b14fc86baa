"""DeepFM (Guo et al., IJCAI 2017): first-order weights + FM pairwise term + MLP, over shared field embeddings.

One embedding table holds every field (per-field offsets in a buffer, one lookup for all fields), as in
rixwew/pytorch-fm's FeaturesEmbedding; a 1-wide table of the same layout holds the first-order weights.
Fields come in three kinds, all ending as one d-vector per field:
- categorical: one index per row;
- multi-valued ("tag1|tag2"): the mean of its tokens' vectors (-1 marks padding);
- numeric: value x the field's vector, as in the paper; a missing value (NaN) uses a second, learned vector.
The model returns logits; probabilities are the policy's business at predict time.

Two ways to assemble the field vectors, which agree to float rounding: `field_embeddings` (training: one lookup of
few rows per table, so the sparse gradients stay small) and `bagged_embeddings` (forward, i.e. scoring and
evaluation: one `embedding_bag` per table whose per-sample weights carry the numeric values and the multi-valued
means, so no (B, F, d) intermediate is built twice).
"""

from __future__ import annotations

from typing import Sequence

import psutil
import torch
import torch.nn.functional as F
from torch import nn

from deepfm_tuner.model.config import PolicyConfig
from deepfm_tuner.model.errors import ConfigError

# float32 copies of every parameter while training: weights, gradients, Adam's two moments, the best-epoch copy
TRAINING_COPIES = 5

ACTIVATION_LAYERS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def fm_interaction(embeddings: torch.Tensor) -> torch.Tensor:
    """Sum over field pairs i<j of <e_i, e_j>, by the identity 1/2 ((sum e)^2 - sum e^2), in float32 (at least)
    whatever the autocast: the identity subtracts two nearly equal numbers, and autocast would run `vecdot` in
    bf16 (8 bits of mantissa: an error of the order of the term itself). (B, F, d) -> (B,)"""
    with torch.autocast(embeddings.device.type, enabled=False):
        embeddings = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
        summed = embeddings.sum(dim=1)
        sum_of_squares = torch.linalg.vector_norm(embeddings.flatten(1), dim=1).square()  # no (B, F*d) temporary
        return 0.5 * (torch.linalg.vecdot(summed, summed) - sum_of_squares)


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask is uniform draws compared with p: fwd + bwd at (4096, 128) takes 3.8 ms against
    6.9 ms for torch's CPU dropout (`bernoulli_`), one thread. Same expectation; no state, as nn.Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand_like(x) >= self.p
        return x * (keep * (1.0 / (1.0 - self.p)))


def multilayer_perceptron(in_features: int, hidden: tuple[int, ...], activation: str, dropout: float) -> nn.Sequential:
    """Linear -> activation -> dropout per hidden width, then one output unit."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), ACTIVATION_LAYERS[activation]()]
        if dropout > 0:
            layers.append(Dropout(dropout))
        in_features = width
    layers.append(nn.Linear(in_features, 1))
    return nn.Sequential(*layers)


def estimate_parameters(categorical_dims: Sequence[int], multivalued_dims: Sequence[int], n_numeric: int,
                        config: PolicyConfig) -> int:
    """The parameter count of `DeepFM(...)` with these vocabularies, computed without allocating anything."""
    rows = sum(categorical_dims) + sum(multivalued_dims) + 2 * n_numeric
    count = rows * (config.embedding_dim + 1) + 1  # embedding table, first-order weights, bias
    width = (len(categorical_dims) + len(multivalued_dims) + n_numeric) * config.embedding_dim
    for units in (*config.deep_hidden_units, 1):
        count += width * units + units
        width = units
    return count


def check_model_size(parameters: int, config: PolicyConfig, copies: int = TRAINING_COPIES,
                     available: int | None = None, device: str = "cpu") -> None:
    """Refuse, before allocating, a model whose training state would not fit in the memory available now: the
    host's, or `available` bytes of `device` (a GPU run holds its training state there, not in host memory)."""
    needed = parameters * 4 * copies
    available = psutil.virtual_memory().available if available is None else available
    where, fix = ("memory", "") if device == "cpu" else (
        f"{device} memory", ", or train on the CPU (training.device: cpu)")
    if needed > available:
        raise ConfigError(
            f"scoring_policy: a DeepFM with embedding_dim={config.embedding_dim} and deep_hidden_units="
            f"{list(config.deep_hidden_units)} has {parameters:,} parameters and needs about {needed / 1e9:,.1f} GB "
            f"to train, but {available / 1e9:,.1f} GB of {where} is available; use smaller deep_hidden_units or "
            f"embedding_dim{fix}")


class DeepFM(nn.Module):
    def __init__(
        self,
        categorical_dims: list[int],
        multivalued_dims: list[int],
        multivalued_lengths: list[int],
        n_numeric: int,
        config: PolicyConfig,
        memory_copies: int = TRAINING_COPIES,
    ):
        """`memory_copies`: float32 copies of the parameters the caller will hold (see TRAINING_COPIES); the
        model is refused with a one-line ConfigError before allocation if they would not fit in memory."""
        check_model_size(estimate_parameters(categorical_dims, multivalued_dims, n_numeric, config), config,
                         memory_copies)
        super().__init__()
        self.config = config
        d = config.embedding_dim
        n_cat, n_multi = len(categorical_dims), len(multivalued_dims)
        sizes = list(categorical_dims) + list(multivalued_dims) + [2] * n_numeric  # numeric: value, missing rows
        starts = torch.tensor([0] + sizes[:-1], dtype=torch.long).cumsum(0)
        self.num_fields = len(sizes)
        self.embedding = nn.Embedding(sum(sizes), d)
        self.first_order = nn.Embedding(sum(sizes), 1)
        self.bias = nn.Parameter(torch.zeros(1))
        self.mlp = multilayer_perceptron(self.num_fields * d, config.deep_hidden_units, config.activation_fn, config.dropout)
        nn.init.normal_(self.embedding.weight, std=0.01)
        nn.init.zeros_(self.first_order.weight)

        self.register_buffer("categorical_offsets", starts[:n_cat].to(torch.int32), persistent=False)
        # each multi-valued slot knows its field's offset, and a (slots, fields) 0/1 matrix pools slots to fields
        slot_field = torch.repeat_interleave(torch.arange(n_multi), torch.tensor(multivalued_lengths, dtype=torch.long))
        self.register_buffer("multivalued_offsets", starts[n_cat : n_cat + n_multi][slot_field].to(torch.int32), persistent=False)
        slot_to_field = torch.zeros(len(slot_field), n_multi)
        slot_to_field[torch.arange(len(slot_field)), slot_field] = 1.0
        self.register_buffer("slot_to_field", slot_to_field, persistent=False)
        numeric_rows = starts[n_cat + n_multi :]
        self.register_buffer("numeric_rows", numeric_rows.clone(), persistent=False)
        # bagged layout of one row: [categorical | multi-valued slots | numeric], one bag per field
        slot_starts = torch.tensor([0] + list(multivalued_lengths[:-1]), dtype=torch.long).cumsum(0)
        bag_starts = torch.cat([torch.arange(n_cat), n_cat + slot_starts[:n_multi],
                                n_cat + len(slot_field) + torch.arange(n_numeric)])
        self.register_buffer("bag_starts", bag_starts, persistent=False)
        # (2, Fn): each numeric field's value row and missing row, fetched in one lookup (one sparse gradient)
        self.register_buffer("numeric_pairs", torch.stack([numeric_rows, numeric_rows + 1]), persistent=False)

    def forward(self, categorical: torch.Tensor, multivalued: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        """categorical (B, Fc) int, multivalued (B, S) int with -1 padding, numeric (B, Fn) float with NaN
        -> logits (B,)"""
        embeddings, first = self.bagged_embeddings(categorical, multivalued, numeric)
        return self.logits_from(embeddings, first)

    def logits_from(self, embeddings: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """The three-part sum over given field vectors (B, F, d) and first-order sums (B,) -> logits (B,)"""
        deep = self.mlp(embeddings.flatten(1)).squeeze(1)
        return self.bias + first + fm_interaction(embeddings) + deep

    def bagged_embeddings(
        self, categorical: torch.Tensor, multivalued: torch.Tensor, numeric: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As `field_embeddings`, by one `embedding_bag` per table: a field is the weighted sum of its rows, with
        weight 1 (categorical), present/count (multi-valued slots) or the value (numeric; 1 for the missing row).
        ~40% less CPU time per row than lookup + where + cat (BENCHMARKS.md, "Scoring")."""
        batch, n_cat, n_slots = len(categorical), categorical.shape[1], multivalued.shape[1]
        width, d = n_cat + n_slots + numeric.shape[1], self.embedding.embedding_dim
        index = torch.empty(batch, width, dtype=torch.long, device=categorical.device)
        weight = torch.ones(batch, width, dtype=self.embedding.weight.dtype, device=categorical.device)
        index[:, :n_cat] = categorical + self.categorical_offsets
        if n_slots:
            present = (multivalued >= 0).to(weight.dtype)
            counts = (present @ self.slot_to_field).clamp(min=1.0)  # (B, Fm) tokens per field
            index[:, n_cat : n_cat + n_slots] = multivalued.clamp(min=0) + self.multivalued_offsets
            weight[:, n_cat : n_cat + n_slots] = present / (counts @ self.slot_to_field.T)
        if numeric.shape[1]:
            missing = torch.isnan(numeric)
            index[:, n_cat + n_slots :] = self.numeric_rows + missing
            weight[:, n_cat + n_slots :] = torch.where(missing, 1.0, numeric)
        starts = (torch.arange(batch, device=index.device) * width).unsqueeze(1) + self.bag_starts
        vectors = F.embedding_bag(index.view(-1), self.embedding.weight, starts.view(-1), mode="sum",
                                  per_sample_weights=weight.view(-1))
        first = F.embedding_bag(index, self.first_order.weight, mode="sum", per_sample_weights=weight)
        return vectors.view(batch, self.num_fields, d), first.squeeze(1)

    def field_embeddings(
        self, categorical: torch.Tensor, multivalued: torch.Tensor, numeric: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, d) field vectors and the (B,) first-order sum."""
        batch, d = len(categorical), self.embedding.embedding_dim
        # every row this batch needs, of every field kind, in one lookup per table: with sparse-gradient training
        # each table then gets one sparse gradient instead of a sum of several (which costs a copy per term)
        indices, shapes = [], []
        if categorical.shape[1]:
            indices.append((categorical + self.categorical_offsets).reshape(-1))
            shapes.append((batch, categorical.shape[1]))
        if multivalued.shape[1]:
            indices.append((multivalued.clamp(min=0) + self.multivalued_offsets).reshape(-1))
            shapes.append((batch, multivalued.shape[1]))
        if numeric.shape[1]:
            indices.append(self.numeric_pairs.reshape(-1))
            shapes.append((2, numeric.shape[1]))
        index = indices[0] if len(indices) == 1 else torch.cat(indices)
        sizes = [a * b for a, b in shapes]
        vectors = [v.view(*shape, d) for v, shape in zip(self.embedding(index).split(sizes), shapes)]
        weights = [w.view(shape) for w, shape in zip(self.first_order(index).split(sizes), shapes)]

        parts, first = [], torch.zeros(batch, device=categorical.device)
        if categorical.shape[1]:
            parts.append(vectors.pop(0))
            first = first + weights.pop(0).sum(dim=1)
        if multivalued.shape[1]:
            present = (multivalued >= 0).to(self.embedding.weight.dtype)  # (B, S)
            counts = (present @ self.slot_to_field).clamp(min=1.0)  # (B, Fm)
            slot_vectors = vectors.pop(0) * present.unsqueeze(-1)  # (B, S, d)
            parts.append(torch.einsum("bsd,sf->bfd", slot_vectors, self.slot_to_field) / counts.unsqueeze(-1))
            slot_weights = weights.pop(0) * present  # (B, S)
            first = first + ((slot_weights @ self.slot_to_field) / counts).sum(dim=1)
        if numeric.shape[1]:
            missing = torch.isnan(numeric).unsqueeze(-1)  # (B, Fn, 1)
            values = torch.nan_to_num(numeric, nan=0.0).unsqueeze(-1)
            value_vec, missing_vec = vectors.pop(0).unbind(0)  # (Fn, d) each: the field's value and missing rows
            parts.append(torch.where(missing, missing_vec, values * value_vec))
            value_w, missing_w = weights.pop(0).unbind(0)  # (Fn,) each
            first = first + torch.where(missing.squeeze(-1), missing_w, values.squeeze(-1) * value_w).sum(dim=1)
        return torch.cat(parts, dim=1), first
