"""The V1 policy config: read and written exactly, validated once with one-line errors."""

import pytest

from deepfm_tuner.model.config import (
    ACTIVATIONS,
    PolicyConfig,
    TrainConfig,
    load_yaml,
    policy_to_v1_yaml,
    read_policy_yaml,
    write_policy_yaml,
)
from deepfm_tuner.model.errors import ConfigError, UserInputError

SEED_V1 = """policy_configs:
  scoring_policy:
    policy_type: deepfm
    embedding_dim: 16
    deep_hidden_units: [128, 64, 32]
    activation_fn: "relu"
    dropout: 0.2
    learning_rate: 0.001
"""


def test_defaults_are_the_seed_values():
    policy = PolicyConfig()
    assert (policy.embedding_dim, policy.deep_hidden_units, policy.activation_fn, policy.dropout,
            policy.learning_rate) == (16, (128, 64, 32), "relu", 0.2, 0.001)


def test_seed_v1_yaml_is_written_back_byte_for_byte(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(SEED_V1)
    policy, training = read_policy_yaml(path)
    assert policy == PolicyConfig() and training == TrainConfig()
    assert policy_to_v1_yaml(policy) == SEED_V1


def test_any_valid_policy_round_trips(tmp_path):
    policy = PolicyConfig(embedding_dim=8, deep_hidden_units=(400, 400), activation_fn="gelu", dropout=0.0,
                          learning_rate=3e-4)
    write_policy_yaml(tmp_path / "p.yaml", policy)
    assert read_policy_yaml(tmp_path / "p.yaml")[0] == policy


def test_training_block_sets_control(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(SEED_V1 + "training:\n  batch_size: 512\n  max_epochs: 3\n  patience: 1\n")
    _, training = read_policy_yaml(path)
    assert (training.batch_size, training.max_epochs, training.patience) == (512, 3, 1)


def test_scientific_notation_is_a_number_though_yaml_1_1_reads_it_as_text(tmp_path):
    """PyYAML reads `1e-5` (no dot) as the string '1e-5': where a number is expected it is that number."""
    path = tmp_path / "p.yaml"
    path.write_text(SEED_V1.replace("learning_rate: 0.001", "learning_rate: 1e-5")
                    + "training:\n  weight_decay: 1e-6\n")
    policy, training = read_policy_yaml(path)
    assert (policy.learning_rate, training.weight_decay) == (1e-5, 1e-6)
    path.write_text(SEED_V1.replace("learning_rate: 0.001", "learning_rate: 1e-5x"))
    with pytest.raises(ConfigError, match=r"learning_rate must be > 0 \(e.g. 0.001\), got '1e-5x'"):
        read_policy_yaml(path)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_listed_activation_is_accepted(activation):
    assert PolicyConfig(activation_fn=activation).activation_fn == activation


@pytest.mark.parametrize("replace, message", [
    ("embedding_dim: 16", "embeding_dim: 16", ),
    ("dropout: 0.2", "dropout: 1.0"),
    ("dropout: 0.2", "dropout: -0.1"),
    ("learning_rate: 0.001", "learning_rate: 0"),
    ("deep_hidden_units: [128, 64, 32]", "deep_hidden_units: []"),
    ("deep_hidden_units: [128, 64, 32]", "deep_hidden_units: [128, -1]"),
    ("activation_fn: \"relu\"", "activation_fn: rleu"),
    ("policy_type: deepfm", "policy_type: widedeep"),
    ("embedding_dim: 16", "embedding_dim: sixteen"),
], ids=["unknown-key", "dropout-1", "dropout-neg", "lr-0", "units-empty", "units-neg", "activation", "policy-type",
        "wrong-type"])
def test_bad_values_raise_one_line_errors(tmp_path, replace, message):
    path = tmp_path / "p.yaml"
    path.write_text(SEED_V1.replace(replace, message))
    with pytest.raises(ConfigError) as info:
        read_policy_yaml(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(SEED_V1.replace("embedding_dim", "embeding_dim"))
    with pytest.raises(ConfigError, match="did you mean 'embedding_dim'"):
        read_policy_yaml(path)


def test_unknown_activation_suggests_and_lists_choices():
    with pytest.raises(ConfigError, match="did you mean 'relu'.*supported: relu, leaky_relu"):
        PolicyConfig(activation_fn="rleu")


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_policy_yaml(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("policy_configs: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        read_policy_yaml(tmp_path / "bad.yaml")


def test_training_rejects_unknown_key_and_bad_device():
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        TrainConfig.from_dict({"batchsize": 10})
    with pytest.raises(ConfigError, match="training.device"):
        TrainConfig(device="tpu")


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "quarter", True, float("nan")])
def test_eval_every_outside_zero_to_one_is_a_one_line_error_naming_the_fix(value):
    with pytest.raises(ConfigError) as info:
        TrainConfig(eval_every=value)
    text = str(info.value)
    assert "training.eval_every must be a fraction of an epoch in (0, 1]" in text and "null" in text
    assert "\n" not in text


@pytest.mark.parametrize("every, points", [(None, 1), (1, 1), (0.5, 2), (0.25, 4), (0.3, 4), (0.1, 10), (1 / 3, 3)])
def test_evaluation_points_per_epoch_count_the_epoch_end(every, points):
    assert TrainConfig(eval_every=every).evals_per_epoch == points
    with pytest.raises(ConfigError, match="training.eval_sample_rows must be an integer >= 1"):
        TrainConfig(eval_every=every, eval_sample_rows=0)


def test_same_key_in_different_mappings_is_fine(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("a: {name: 1}\nb: {name: 2}\n")
    assert load_yaml(path) == {"a": {"name": 1}, "b": {"name": 2}}


def test_absurd_hidden_width_is_a_config_error():
    with pytest.raises(ConfigError, match="width 10000000 is larger than 65536"):
        PolicyConfig(deep_hidden_units=(10**7,))
    with pytest.raises(ConfigError, match="embedding_dim must be at most 4096"):
        PolicyConfig(embedding_dim=10**6)


def test_user_errors_are_user_input_errors():
    assert issubclass(ConfigError, UserInputError)


def test_patience_steps_needs_eval_every_and_counts_from_one():
    assert TrainConfig(eval_every=0.25, patience_steps=3).patience_steps == 3
    with pytest.raises(ConfigError) as info:
        TrainConfig(patience_steps=2)
    assert str(info.value) == ("training: patience_steps counts evaluations every eval_every of an epoch; set "
                               "eval_every (e.g. 0.25) too, or use patience (epochs)")
    with pytest.raises(ConfigError, match="training.patience_steps must be an integer >= 1"):
        TrainConfig(eval_every=0.25, patience_steps=0)
