"""DeepFM's parts: the FM term equals the brute-force pair sum; every parameter learns; field kinds embed right."""

import itertools

import torch

from deepfm_tuner.model.config import PolicyConfig
from deepfm_tuner.model.deepfm import DeepFM, estimate_parameters, fm_interaction

POLICY = PolicyConfig(embedding_dim=4, deep_hidden_units=(8, 4), dropout=0.0)


def inputs(batch=6):
    g = torch.Generator().manual_seed(0)
    categorical = torch.stack([torch.randint(0, 5, (batch,), generator=g), torch.randint(0, 7, (batch,), generator=g)], 1)
    multivalued = torch.tensor([[2, 3, -1], [0, -1, -1], [1, 2, 3]] * (batch // 3), dtype=torch.int32)
    numeric = torch.randn(batch, 2, generator=g)
    numeric[0, 1] = float("nan")
    return categorical.int(), multivalued, numeric


def model():
    torch.manual_seed(0)
    m = DeepFM([5, 7], [4], [3], 2, POLICY)
    torch.nn.init.normal_(m.first_order.weight, std=0.1)
    return m


def test_fm_term_equals_brute_force_sum_over_field_pairs():
    e = torch.randn(5, 6, 3, dtype=torch.float64)
    brute = torch.zeros(5, dtype=torch.float64)
    for i, j in itertools.combinations(range(6), 2):
        brute += (e[:, i] * e[:, j]).sum(dim=1)
    assert torch.allclose(fm_interaction(e), brute)


def test_forward_is_bias_plus_first_order_plus_fm_plus_mlp():
    m = model()
    c, mv, n = inputs()
    embeddings, first = m.field_embeddings(c, mv, n)
    expected = m.bias + first + fm_interaction(embeddings) + m.mlp(embeddings.flatten(1)).squeeze(1)
    assert torch.allclose(m(c, mv, n), expected)
    assert embeddings.shape == (6, 2 + 1 + 2, 4)


def test_scoring_path_agrees_with_the_training_path_for_every_field_kind():
    m = model()
    c, mv, n = inputs()
    mv[1] = -1  # a row whose multi-valued field has no token at all: a zero vector either way
    embeddings, first = m.field_embeddings(c, mv, n)
    bagged, bagged_first = m.bagged_embeddings(c, mv, n)
    assert torch.allclose(bagged, embeddings, atol=1e-6)
    assert torch.allclose(bagged_first, first, atol=1e-6)


def test_gradients_reach_every_parameter():
    m = model()
    m(*inputs()).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_multivalued_field_is_the_mean_of_its_tokens_and_padding_is_ignored():
    m = model()
    c, mv, n = inputs(3)
    embeddings, _ = m.field_embeddings(c, mv, n)
    table, offset = m.embedding.weight, 5 + 7
    assert torch.allclose(embeddings[0, 2], (table[offset + 2] + table[offset + 3]) / 2)
    assert torch.allclose(embeddings[1, 2], table[offset + 0])


def test_numeric_field_is_value_times_vector_and_missing_uses_its_own_vector():
    m = model()
    c, mv, n = inputs(3)
    embeddings, _ = m.field_embeddings(c, mv, n)
    table, start = m.embedding.weight, 5 + 7 + 4
    assert torch.allclose(embeddings[1, 3], n[1, 0] * table[start])
    assert torch.allclose(embeddings[0, 4], table[start + 3])  # field 2's "missing" row
    assert torch.isfinite(m(c, mv, n)).all()


def test_one_lookup_table_with_offsets_for_all_fields():
    m = model()
    assert m.embedding.num_embeddings == 5 + 7 + 4 + 2 * 2
    assert m.categorical_offsets.tolist() == [0, 5]


def test_state_dict_holds_only_learned_weights():
    keys = set(model().state_dict())
    assert {"embedding.weight", "first_order.weight", "bias"} <= keys
    assert not any("offsets" in k or "slot_to_field" in k for k in keys)


def test_estimate_parameters_matches_the_allocated_model():
    policy = PolicyConfig(embedding_dim=4, deep_hidden_units=(8, 4), dropout=0.0)
    model = DeepFM([5, 7], [4], [3], 2, policy)
    assert estimate_parameters([5, 7], [4], 2, policy) == sum(p.numel() for p in model.parameters())
