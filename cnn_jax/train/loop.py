"""The training loop: `train_and_evaluate(config, workdir)`.

Everything is built and checked (dataset, model, optimizer, schedule, shapes) before the
first step runs. Each epoch prints one line and appends one JSON record to
`workdir/metrics.jsonl`; the resolved config goes to `workdir/config.json` and the final
whole-test-set metrics (per class, confusion matrix) to `workdir/final_metrics.json`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import data as data_lib
from cnn_jax import metrics as metrics_lib
from cnn_jax.data.transforms import make_augment
from cnn_jax.models import get_model
from cnn_jax.train.optim import make_optimizer, make_schedule
from cnn_jax.train.step import TrainState, create_train_state, eval_step, train_step


def _options(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """A `model`/`dataset` section's options: every key but `name`."""
    return {k: v for k, v in cfg.to_dict().items() if k != "name"}


def validate_config(config: ml_collections.ConfigDict) -> None:
    for key in ("batch_size", "eval_batch_size", "num_epochs"):
        value = config[key]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{key} must be a positive integer, got {value!r}.")
    lr = config.optimizer.learning_rate
    if not lr > 0:
        raise ValueError(f"config.optimizer.learning_rate must be positive, got {lr!r}.")
    if not 0 <= config.label_smoothing < 1:
        raise ValueError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing!r}.")


def check_batch_shape(state: TrainState, images_shape: tuple[int, ...], what: str) -> None:
    if tuple(images_shape) != tuple(state.input_shape):
        raise ValueError(f"{what} has images of shape {tuple(images_shape)}, but the model's "
                         f"parameters were made for {tuple(state.input_shape)}.")


def evaluate(eval_fn: Callable, state: TrainState, dataset: data_lib.ArrayDataset,
             batch_size: int) -> dict:
    """Whole-set metrics of `state` on `dataset` (every example exactly once)."""
    counts = None
    for batch in data_lib.eval_batches(dataset, batch_size):
        counts = metrics_lib.add_counts(counts, eval_fn(state, batch))
    return metrics_lib.summarize(counts)


def _write_json(path: str, obj: Any) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None,
                       log: Callable[[str], None] = functools.partial(print, flush=True)
                       ) -> tuple[TrainState, list[dict]]:
    """Trains `config` and evaluates on the test split after every epoch.

    Returns the final state and the per-epoch history (what `metrics.jsonl` holds).
    `workdir=None` writes nothing.
    """
    validate_config(config)
    train_ds = data_lib.get_dataset(config.dataset.name, "train", **_options(config.dataset))
    test_ds = data_lib.get_dataset(config.dataset.name, "test", **_options(config.dataset))
    model = get_model(config.model.name, num_classes=train_ds.num_classes, **_options(config.model))
    steps_per_epoch = data_lib.steps_per_epoch(train_ds, config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"config.batch_size={config.batch_size} is larger than the "
                         f"{len(train_ds)} training examples.")
    total_steps = config.num_epochs * steps_per_epoch
    schedule = make_schedule(config.schedule, config.optimizer.learning_rate, total_steps,
                             steps_per_epoch)
    tx = make_optimizer(config.optimizer, schedule)
    state = create_train_state(model, tx, jax.random.key(config.seed), train_ds.image_shape)
    check_batch_shape(state, test_ds.image_shape, "The test split")

    p_train_step = jax.jit(functools.partial(train_step, label_smoothing=config.label_smoothing),
                           donate_argnums=0)
    p_eval_step = jax.jit(eval_step)
    augment = make_augment(config.get("augment"))
    p_augment = jax.jit(augment) if augment else None
    augment_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
    num_params = sum(p.size for p in jax.tree.leaves(state.params))
    log(f"{config.model.name}: {num_params:,} parameters | {config.dataset.name}: "
        f"{len(train_ds)} train / {len(test_ds)} test, {train_ds.image_shape} | "
        f"{config.num_epochs} epochs x {steps_per_epoch} steps of {config.batch_size}")

    if workdir:
        os.makedirs(workdir, exist_ok=True)
        _write_json(os.path.join(workdir, "config.json"), config.to_dict())
        history_file = open(os.path.join(workdir, "metrics.jsonl"), "w")
    history = []
    start = time.perf_counter()
    for epoch in range(1, config.num_epochs + 1):
        epoch_start = time.perf_counter()
        step_metrics = []
        batches = data_lib.train_batches(train_ds, config.batch_size, seed=config.seed,
                                         epoch=epoch)
        for i, batch in enumerate(batches):
            if p_augment is not None:
                key = jax.random.fold_in(augment_rng, (epoch - 1) * steps_per_epoch + i)
                batch = dict(batch, image=p_augment(key, batch["image"]))
            state, m = p_train_step(state, batch)
            step_metrics.append(m)
        step_metrics = jax.device_get(step_metrics)  # one sync per epoch, not per step
        losses = np.array([m["loss"] for m in step_metrics])
        if not np.all(np.isfinite(losses)):
            bad = int(np.argmin(np.isfinite(losses)))
            raise FloatingPointError(
                f"The training loss became {losses[bad]} at step "
                f"{(epoch - 1) * steps_per_epoch + bad + 1} (epoch {epoch}); lower the learning "
                f"rate ({config.optimizer.learning_rate}) or clip gradients "
                "(--config.optimizer.grad_clip_norm).")
        test = evaluate(p_eval_step, state, test_ds, config.eval_batch_size)
        record = {
            "epoch": epoch,
            "step": int(state.step),
            "learning_rate": float(schedule(int(state.step) - 1)),
            "train_loss": float(losses.mean()),
            "train_accuracy": float(np.mean([m["accuracy"] for m in step_metrics])),
            **{f"test_{k}": v for k, v in test.items()
               if not k.startswith("per_class") and k != "confusion_matrix"},
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        if workdir:
            history_file.write(json.dumps(record) + "\n")
            history_file.flush()
        log(f"epoch {epoch:3d}/{config.num_epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.2%}  |  test loss {test['loss']:.4f} "
            f"acc {test['accuracy']:.2%}  macro-F1 {test['macro_f1']:.4f}  |  "
            f"lr {record['learning_rate']:.4g}  {record['epoch_seconds']:.1f}s")
    elapsed = time.perf_counter() - start
    log(f"done in {elapsed:.1f}s: test accuracy {history[-1]['test_accuracy']:.2%}")
    if workdir:
        history_file.close()
        _write_json(os.path.join(workdir, "final_metrics.json"),
                    {"epoch": config.num_epochs, "wall_seconds": elapsed,
                     "class_names": list(test_ds.class_names), **test})
    return state, history
