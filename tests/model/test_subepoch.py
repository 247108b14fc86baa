"""Sub-epoch evaluation in the training loop (training.eval_every): a fixed validation sample every fraction of an
epoch, the last point at the epoch's end, stopping where a point asks; evaluating changes nothing in training.
How a study reports and prunes on these points: tests/tuner/pipeline/test_subepoch_study.py."""

import pytest
import torch

from deepfm_tuner.model.config import PolicyConfig
from deepfm_tuner.model.train import eval_rows, evaluate, train, validation_sample

from conftest import TINY_POLICY, TINY_TRAINING

QUARTERS = TINY_TRAINING.replace(eval_every=0.25, max_epochs=2, patience=0)


def test_a_quarter_epoch_gives_four_points_per_epoch_the_last_at_its_end(tiny_prepared):
    points = []
    result = train(tiny_prepared, TINY_POLICY, QUARTERS, on_eval=points.append)
    n, batch = len(tiny_prepared.train), QUARTERS.batch_size
    assert [p.step for p in points] == list(range(8)) and [p.epoch for p in points] == [0] * 4 + [1] * 4
    samples = [p.samples for p in points]
    assert samples == sorted(set(samples))  # strictly increasing
    assert samples[3] == n and samples[7] == 2 * n == result.samples == result.history[-1].samples
    for k, p in enumerate(points):  # each point is taken after the batch that reaches k/4 of the epoch's rows
        target = (p.epoch + ((k % 4) + 1) / 4) * n
        assert target <= p.samples < target + batch and p.epochs == pytest.approx(p.samples / n)
    assert [m.samples for m in result.history] == [n, 2 * n]


def test_sub_epoch_evaluation_does_not_change_training(tiny_prepared):
    """Same seed, with and without on_eval: identical epochs (evaluation runs under no_grad in eval mode and
    draws its sample from its own generator, so dropout's and the shuffle's random streams are untouched)."""
    policy = PolicyConfig(embedding_dim=4, deep_hidden_units=(16, 8), dropout=0.3, learning_rate=0.01)
    plain = train(tiny_prepared, policy, QUARTERS)
    evaluated = train(tiny_prepared, policy, QUARTERS, on_eval=lambda m: None)
    key = [(m.train_loss, m.val_auc, m.val_logloss, m.samples) for m in plain.history]
    assert [(m.train_loss, m.val_auc, m.val_logloss, m.samples) for m in evaluated.history] == key
    assert plain.best_epoch == evaluated.best_epoch
    for a, b in zip(plain.model.state_dict().values(), evaluated.model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_sample_is_fixed_and_the_whole_split_when_smaller(tiny_prepared):
    val = tiny_prepared.val
    a, b = validation_sample(val, 100, seed=7), validation_sample(val, 100, seed=7)
    assert len(a) == 100 and torch.equal(a.labels, b.labels) and torch.equal(a.categorical, b.categorical)
    assert not torch.equal(validation_sample(val, 100, seed=8).categorical, a.categorical)
    assert validation_sample(val, len(val), seed=7) is val
    # a sample as large as the split: the epoch's end point equals the epoch's full validation
    points = []
    result = train(tiny_prepared, TINY_POLICY, QUARTERS.replace(eval_sample_rows=len(val)), on_eval=points.append)
    for epoch in result.history:
        end = points[epoch.epoch * 4 + 3]
        assert (end.val_auc, end.val_logloss) == (epoch.val_auc, epoch.val_logloss)
    points = []
    train(tiny_prepared, TINY_POLICY, QUARTERS.replace(eval_sample_rows=50, max_epochs=1), on_eval=points.append)
    assert points[3].val_auc != result.history[0].val_auc  # 50 rows, not the full split (same training)


def test_points_line_up_across_batch_sizes(tiny_prepared):
    """Points are row fractions, not step counts: batch sizes 100 and 256 report the same steps, each within
    a batch of the same row count."""
    n = len(tiny_prepared.train)
    control = TINY_TRAINING.replace(eval_every=0.3, max_epochs=1)
    assert eval_rows(n, control) == [round(0.3 * n), round(0.6 * n), round(0.9 * n), n]
    for batch in (100, 256):
        points = []
        train(tiny_prepared, TINY_POLICY, control.replace(batch_size=batch), on_eval=points.append)
        assert [p.step for p in points] == [0, 1, 2, 3]
        assert all(t <= p.samples < t + batch for t, p in zip(eval_rows(n, control), points))


def test_a_point_that_asks_to_stop_ends_the_epoch_there(tiny_prepared):
    seen = []
    result = train(tiny_prepared, TINY_POLICY, QUARTERS, on_eval=lambda m: m.step == 1,
                   on_epoch=seen.append)
    n = len(tiny_prepared.train)
    assert result.stop_reason.startswith("stopped by callback at step 1")
    assert n / 2 <= result.samples < n and len(result.history) == 1 and seen == result.history
    assert result.best_epoch == 0


def test_without_eval_every_on_eval_is_never_called(tiny_prepared):
    calls = []
    train(tiny_prepared, TINY_POLICY, TINY_TRAINING.replace(max_epochs=1), on_eval=calls.append)
    assert calls == []


def test_step_patience_stops_where_the_sample_curve_turns_down_and_keeps_its_peak(tiny_prepared):
    """patience_steps: 2 stops two evaluations after the best one on the validation sample, mid-epoch if that is
    where it falls, and keeps the best point's weights (not the epoch's end), scored on the full split."""
    policy = PolicyConfig(embedding_dim=8, deep_hidden_units=(64,), dropout=0.0, learning_rate=0.05)  # overfits fast
    control = QUARTERS.replace(max_epochs=8, patience_steps=2)
    points = []
    result = train(tiny_prepared, policy, control, on_eval=points.append)
    peak = max(range(len(points)), key=lambda k: (points[k].val_auc, -k))  # the first of equal bests
    assert len(points) == peak + 3 and len(points) < 8 * 4  # stopped two evaluations after the peak
    assert result.stop_reason.startswith("early stop: no better val_auc on the validation sample for 2 evaluations")
    assert result.samples == points[-1].samples  # no row trained after the stop
    assert result.best.samples == points[peak].samples and result.best_epoch == points[peak].epoch
    val_auc, val_logloss = evaluate(result.model, tiny_prepared.val)  # the peak's weights, on the full split
    assert (result.best.val_auc, result.best.val_logloss) == pytest.approx((val_auc, val_logloss), abs=1e-9)


def test_step_patience_needs_no_hook_and_changes_nothing_before_it_stops(tiny_prepared):
    """`deepfm train` passes no on_eval: patience_steps evaluates on its own and stops where a hooked run stops.
    Until it stops, training is the run without it (the same points)."""
    policy = PolicyConfig(embedding_dim=8, deep_hidden_units=(64,), dropout=0.0, learning_rate=0.05)
    plain, hooked = [], []
    train(tiny_prepared, policy, QUARTERS.replace(max_epochs=8), on_eval=plain.append)
    with_hook = train(tiny_prepared, policy, QUARTERS.replace(max_epochs=8, patience_steps=2), on_eval=hooked.append)
    alone = train(tiny_prepared, policy, QUARTERS.replace(max_epochs=8, patience_steps=2))
    assert hooked == plain[:len(hooked)] and len(hooked) < len(plain)
    assert (alone.samples, alone.best.samples, alone.stop_reason) == (
        with_hook.samples, with_hook.best.samples, with_hook.stop_reason)
    assert alone.best.val_auc == pytest.approx(with_hook.best.val_auc, abs=1e-12)
