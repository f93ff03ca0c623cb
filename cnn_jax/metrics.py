"""Classification metrics over a whole evaluation set.

Each evaluation batch gives additive counts (`eval_counts`, jit-able); counts are summed over
batches (`add_counts`) and turned into metrics once, at the end (`summarize`). So accuracy,
precision, recall and F1 are those of the whole set, never averages of per-batch ratios, and
padded examples (weight 0) count for nothing.

Conventions follow scikit-learn: a class's precision (recall) is 0 where it has no
predictions (no examples); macro averages run over the classes present in the labels or the
predictions.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     weights: jax.Array | None = None) -> jax.Array:
    """counts[i, j] = (weighted) number of examples of class i predicted as j."""
    true = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    pred = jax.nn.one_hot(predictions, num_classes, dtype=jnp.float32)
    if weights is not None:
        true = true * weights[:, None]
    return true.T @ pred


def topk_correct(logits: jax.Array, labels: jax.Array, k: int,
                 weights: jax.Array | None = None) -> jax.Array:
    """(Weighted) number of examples whose label is among the k highest logits."""
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    rank = jnp.sum(logits > label_logit, axis=-1)
    hit = (rank < k).astype(jnp.float32)
    return jnp.sum(hit if weights is None else hit * weights)


def eval_counts(logits: jax.Array, labels: jax.Array, losses: jax.Array,
                weights: jax.Array | None = None, top_k: Sequence[int] = (5,)) -> dict:
    """Additive statistics of one batch; `losses` are per-example."""
    if weights is None:
        weights = jnp.ones(labels.shape, jnp.float32)
    num_classes = logits.shape[-1]
    counts = {
        "count": jnp.sum(weights),
        "loss_sum": jnp.sum(losses * weights),
        "confusion": confusion_matrix(labels, jnp.argmax(logits, -1), num_classes, weights),
    }
    for k in top_k:
        if k < num_classes:
            counts[f"top{k}_correct"] = topk_correct(logits, labels, k, weights)
    return counts


def add_counts(a: dict | None, b: dict) -> dict:
    return b if a is None else jax.tree.map(jnp.add, a, b)


def precision_recall_f1(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support,
            "present": (support > 0) | (predicted > 0)}


def summarize(counts: dict) -> dict:
    """Whole-set metrics from summed counts: loss, accuracy, top-k accuracy, macro
    precision/recall/F1 (floats), and per-class precision/recall/F1 and the confusion matrix
    (lists)."""
    counts = jax.device_get(counts)
    n = float(counts["count"])
    if n <= 0:
        raise ValueError("No examples were evaluated: the evaluation set is empty.")
    confusion = np.asarray(counts["confusion"])
    per_class = precision_recall_f1(confusion)
    present = per_class["present"]
    out = {
        "loss": float(counts["loss_sum"]) / n,
        "accuracy": float(np.trace(confusion)) / n,
        "num_examples": int(round(n)),
    }
    for key, value in counts.items():
        if key.endswith("_correct"):
            out[key.replace("_correct", "_accuracy")] = float(value) / n
    for name in ("precision", "recall", "f1"):
        out[f"macro_{name}"] = float(per_class[name][present].mean())
        out[f"per_class_{name}"] = per_class[name].tolist()
    out["confusion_matrix"] = confusion.round().astype(int).tolist()
    return out


# Segmentation: every labelled pixel is one example of the confusion matrix.

def pixel_confusion(labels: jax.Array, predictions: jax.Array, num_classes: int,
                    valid: jax.Array) -> jax.Array:
    """counts[i, j] = number of `valid` pixels of class i predicted as j, as int32 (exact far
    beyond float32's 2**24)."""
    index = jnp.where(valid, labels * num_classes + predictions, 0).reshape(-1)
    counts = jnp.bincount(index, weights=valid.reshape(-1).astype(jnp.int32),
                          length=num_classes * num_classes)
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def segmentation_summary(confusion: np.ndarray) -> dict:
    """Pixel accuracy, per-class and mean IoU and Dice, and frequency-weighted IoU from a
    confusion matrix summed over a whole set. A class absent from both the labels and the
    predictions has no IoU/Dice (None per class) and is left out of the means."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    union = support + predicted - tp
    present = union > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
    dice = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=present)
    total = confusion.sum()
    return {
        "accuracy": float(tp.sum() / total),
        "mean_iou": float(iou[present].mean()),
        "mean_dice": float(dice[present].mean()),
        "fw_iou": float((support / total * iou).sum()),
        "per_class_iou": [float(v) if p else None for v, p in zip(iou, present)],
        "per_class_dice": [float(v) if p else None for v, p in zip(dice, present)],
    }
