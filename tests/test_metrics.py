"""Whole-set metrics against scikit-learn, on random predictions, with padding masks,
accumulated over uneven batches, and with classes missing from the data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from cnn_jax import metrics


def random_case(seed, n=203, num_classes=7, absent=()):
    rng = np.random.default_rng(seed)
    classes = [c for c in range(num_classes) if c not in absent]
    labels = rng.choice(classes, size=n).astype(np.int32)
    logits = rng.normal(size=(n, num_classes)).astype(np.float32)
    # Make predictions better than chance so that every metric is non-trivial.
    logits[np.arange(n), labels] += rng.uniform(0, 2.0, size=n).astype(np.float32)
    return logits, labels


def counts_over_batches(logits, labels, batch_size, top_k=(3,)):
    """Sum of per-batch counts, the last batch padded with mask 0, as evaluation does."""
    total = None
    for start in range(0, len(labels), batch_size):
        lg, lb = logits[start:start + batch_size], labels[start:start + batch_size]
        pad = batch_size - len(lb)
        mask = np.r_[np.ones(len(lb)), np.zeros(pad)].astype(np.float32)
        lg = np.concatenate([lg, np.full((pad, lg.shape[1]), 9.0, np.float32)])  # junk padding
        lb = np.concatenate([lb, np.zeros(pad, np.int32)])
        losses = -jax.nn.log_softmax(lg)[np.arange(batch_size), lb]
        total = metrics.add_counts(total, metrics.eval_counts(
            jnp.asarray(lg), jnp.asarray(lb), losses, jnp.asarray(mask), top_k))
    return total


@pytest.mark.parametrize("seed,absent", [(0, ()), (1, (2,)), (2, (0, 6))])
@pytest.mark.parametrize("batch_size", [1, 32, 64, 500])
def test_summary_equals_sklearn(seed, absent, batch_size):
    logits, labels = random_case(seed, absent=absent)
    preds = logits.argmax(-1)
    out = metrics.summarize(counts_over_batches(logits, labels, batch_size))

    assert out["num_examples"] == len(labels)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-12)
    assert out["loss"] == pytest.approx(skm.log_loss(labels, jax.nn.softmax(logits),
                                                     labels=range(7)), rel=1e-5)
    assert out["top3_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(labels, logits, k=3, labels=range(7)), abs=1e-12)
    np.testing.assert_array_equal(out["confusion_matrix"],
                                  skm.confusion_matrix(labels, preds, labels=range(7)))
    p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, labels=range(7),
                                                     zero_division=0)
    np.testing.assert_allclose(out["per_class_precision"], p, atol=1e-12)
    np.testing.assert_allclose(out["per_class_recall"], r, atol=1e-12)
    np.testing.assert_allclose(out["per_class_f1"], f, atol=1e-12)
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score),
                     ("f1", skm.f1_score)):
        expected = fn(labels, preds, average="macro", zero_division=0)
        assert out[f"macro_{name}"] == pytest.approx(expected, abs=1e-12), name


def test_class_never_predicted_and_never_present():
    labels = np.array([0, 0, 1, 1, 3], np.int32)      # class 2 absent, class 3 never predicted
    preds = np.array([0, 1, 1, 1, 0], np.int32)
    logits = jax.nn.one_hot(preds, 4) * 5.0
    out = metrics.summarize(metrics.eval_counts(logits, jnp.asarray(labels), jnp.zeros(5)))
    p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, labels=range(4), zero_division=0)
    np.testing.assert_allclose(out["per_class_precision"], p)
    np.testing.assert_allclose(out["per_class_recall"], r)
    assert out["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro",
                                                         zero_division=0))
    assert out["per_class_recall"][3] == 0.0 and out["per_class_precision"][2] == 0.0


def test_top_k_skipped_when_k_not_below_num_classes():
    logits, labels = random_case(0, n=10, num_classes=3)
    counts = metrics.eval_counts(jnp.asarray(logits), jnp.asarray(labels), jnp.zeros(10),
                                 top_k=(5,))
    assert "top5_correct" not in counts


def test_counts_are_jittable_and_match_eager():
    logits, labels = random_case(3)
    losses = jnp.zeros(len(labels))
    eager = metrics.eval_counts(jnp.asarray(logits), jnp.asarray(labels), losses)
    jitted = jax.jit(metrics.eval_counts)(jnp.asarray(logits), jnp.asarray(labels), losses)
    jax.tree.map(np.testing.assert_allclose, eager, jitted)


def test_empty_evaluation_is_an_error():
    counts = metrics.eval_counts(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), jnp.zeros(2),
                                 weights=jnp.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        metrics.summarize(counts)
