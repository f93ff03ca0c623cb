"""Image classification: one class label per image.

Batch: {'image': (N, H, W, C), 'label': (N,) int32} (mixup/cutmix make 'label' (N, classes)
probabilities). Loss: softmax cross-entropy with optional label smoothing. Evaluation: the
confusion matrix, loss and top-k counts of `cnn_jax.metrics`, summarized into accuracy,
top-5 accuracy and macro precision/recall/F1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax import metrics as metrics_lib

METRICS = ("accuracy", "loss", "top5_accuracy", "macro_f1", "macro_precision", "macro_recall")


def targets(image_shape: tuple[int, ...]) -> dict:
    """What one example holds beside its image: {key: (shape, dtype)}."""
    return {"label": ((), jnp.int32)}


def options(config) -> dict:
    """The config values this task's loss reads."""
    return {"label_smoothing": config.label_smoothing}


def check_config(config) -> None:
    if not 0 <= config.label_smoothing < 1:
        raise ValueError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing!r}.")


def check_dataset(dataset, where: str) -> None:
    label = np.asarray(dataset.source[0]["label"])
    if label.ndim != 0:
        raise ValueError(f"{where}: examples hold a label of shape {label.shape}, but "
                         "config.task='classification' needs one class per image; for per-pixel "
                         "masks set config.task='segmentation'.")


def check_model(logits_shape: tuple[int, ...], input_shape, num_classes: int, model: str) -> None:
    if len(logits_shape) != 2 or logits_shape[-1] != num_classes:
        raise ValueError(f"Model {model!r} gives logits of shape {logits_shape} for inputs "
                         f"{input_shape}; classification needs (N, {num_classes}): one score per "
                         f"class and image. Choose a classifier (config.model.name).")


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy in float32. `labels` are class indices, or
    probabilities over classes (as mixup makes them)."""
    logits = logits.astype(jnp.float32)
    if labels.ndim == logits.ndim - 1:
        labels = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing:
        labels = optax.smooth_labels(labels, label_smoothing)
    return optax.softmax_cross_entropy(logits, labels)


def loss(logits: jax.Array, batch: dict, label_smoothing: float = 0.0) -> jax.Array:
    """The batch's mean loss (what the train step differentiates)."""
    return jnp.mean(cross_entropy(logits, batch["label"], label_smoothing))


def train_metrics(logits: jax.Array, batch: dict, **unused) -> dict:
    labels = batch["label"]
    if labels.ndim == logits.ndim:  # soft labels
        labels = jnp.argmax(labels, -1)
    return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def eval_counts(logits: jax.Array, batch: dict, top_k: tuple[int, ...] = (5,), **unused) -> dict:
    """Additive counts of one batch; examples with `batch['mask'] == 0` (padding) count for
    nothing."""
    losses = cross_entropy(logits, batch["label"])
    weights = batch.get("mask")
    return metrics_lib.eval_counts(logits, batch["label"], losses,
                                   None if weights is None else weights.astype(jnp.float32), top_k)


summarize = metrics_lib.summarize


def log_line(test: dict) -> str:
    return f"acc {test['accuracy']:.2%}  macro-F1 {test['macro_f1']:.4f}"
