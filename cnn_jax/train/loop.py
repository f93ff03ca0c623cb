"""The training loop: `train_and_evaluate(config, workdir)`.

Everything is built and checked (dataset, transforms, model, optimizer, schedule, shapes)
before the first step runs. The input pipeline (grain) yields the batch of each global step;
transforms run on device inside the jitted step, keyed by `fold_in(seed, step)`, so a run's
batches depend on its seed and step alone. After each epoch the loop prints one line and
appends one JSON record to `workdir/metrics.jsonl`; the resolved config goes to
`workdir/config.json` and the final whole-test-set metrics (per class, confusion matrix) to
`workdir/final_metrics.json`.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import data as data_lib
from cnn_jax import metrics as metrics_lib
from cnn_jax.data.transforms import make_preprocess
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


def model_input_shape(preprocess: Callable, dataset: data_lib.Dataset) -> tuple[int, ...]:
    """The (H, W, C) the model sees: the dataset's images after the transforms."""
    batch = {"image": jax.ShapeDtypeStruct((2, *dataset.image_shape), jnp.uint8),
             "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
    return tuple(jax.eval_shape(preprocess, jax.random.key(0), batch)["image"].shape[1:])


def make_steps(config: ml_collections.ConfigDict, train_preprocess: Callable,
               eval_preprocess: Callable) -> tuple[Callable, Callable]:
    """The jitted train and eval steps, transforms included: the train step draws its
    augmentation key from (seed, step), so it stays a pure function of (state, batch)."""
    augment_rng = jax.random.fold_in(jax.random.key(config.seed), 1)

    def train_fn(state: TrainState, batch: dict):
        batch = train_preprocess(jax.random.fold_in(augment_rng, state.step), batch)
        return train_step(state, batch, label_smoothing=config.label_smoothing)

    def eval_fn(state: TrainState, batch: dict):
        return eval_step(state, eval_preprocess(augment_rng, batch))

    return jax.jit(train_fn, donate_argnums=0), jax.jit(eval_fn)


def evaluate(eval_fn: Callable, state: TrainState, dataset: data_lib.Dataset, batch_size: int,
             num_threads: int = 2) -> dict:
    """Whole-set metrics of `state` on `dataset` (every example exactly once)."""
    counts = None
    for batch in data_lib.eval_batches(dataset, batch_size, num_threads=num_threads):
        counts = metrics_lib.add_counts(counts, eval_fn(state, batch))
    return metrics_lib.summarize(counts)


def _write_json(path: str, obj: Any) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _check_finite(losses: np.ndarray, first_step: int, epoch: int, config) -> None:
    if not np.all(np.isfinite(losses)):
        bad = int(np.argmin(np.isfinite(losses)))
        raise FloatingPointError(
            f"The training loss became {losses[bad]} at step {first_step + bad} (epoch {epoch}); lower the "
            f"learning rate ({config.optimizer.learning_rate}) or clip gradients "
            "(--config.optimizer.grad_clip_norm).")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None,
                       log: Callable[[str], None] = functools.partial(print, flush=True)
                       ) -> tuple[TrainState, list[dict]]:
    """Trains `config` and evaluates on the test split after every epoch.

    Returns the final state and the per-epoch history (what `metrics.jsonl` holds).
    `workdir=None` writes nothing.
    """
    validate_config(config)
    options = _options(config.dataset)
    train_ds = data_lib.get_dataset(config.dataset.name, "train", **options)
    test_ds = data_lib.get_dataset(config.dataset.name, "test", **options)
    stats = dict(num_classes=train_ds.num_classes, mean=train_ds.mean, std=train_ds.std)
    train_preprocess = make_preprocess(config.train_transforms, **stats)
    eval_preprocess = make_preprocess(config.eval_transforms, train=False, **stats)
    input_shape = model_input_shape(train_preprocess, train_ds)
    eval_shape = model_input_shape(eval_preprocess, test_ds)
    if eval_shape != input_shape:
        raise ValueError(f"Training images reach the model as {input_shape} but test images as "
                         f"{eval_shape}; make config.eval_transforms produce {input_shape}.")
    model = get_model(config.model.name, num_classes=train_ds.num_classes, **_options(config.model))
    steps_per_epoch = data_lib.steps_per_epoch(train_ds, config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"config.batch_size={config.batch_size} is larger than the "
                         f"{len(train_ds)} training examples.")
    total_steps = config.num_epochs * steps_per_epoch
    schedule = make_schedule(config.schedule, config.optimizer.learning_rate, total_steps,
                             steps_per_epoch)
    tx = make_optimizer(config.optimizer, schedule)
    state = create_train_state(model, tx, jax.random.key(config.seed), input_shape)
    p_train_step, p_eval_step = make_steps(config, train_preprocess, eval_preprocess)
    batches = data_lib.train_iterator(train_ds, config.batch_size, seed=config.seed,
                                      num_epochs=config.num_epochs,
                                      num_threads=config.input_threads)

    num_params = sum(p.size for p in jax.tree.leaves(state.params))
    log(f"{config.model.name}: {num_params:,} parameters | {config.dataset.name}: "
        f"{len(train_ds)} train / {len(test_ds)} test, {train_ds.image_shape} -> {input_shape} | "
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
        for _ in range(steps_per_epoch):
            state, m = p_train_step(state, next(batches))
            step_metrics.append(m)
        step_metrics = jax.device_get(step_metrics)  # one sync per epoch, not per step
        losses = np.array([m["loss"] for m in step_metrics])
        _check_finite(losses, (epoch - 1) * steps_per_epoch + 1, epoch, config)
        train_seconds = time.perf_counter() - epoch_start
        test = evaluate(p_eval_step, state, test_ds, config.eval_batch_size, config.input_threads)
        record = {
            "epoch": epoch,
            "step": int(state.step),
            "learning_rate": float(schedule(int(state.step) - 1)),
            "train_loss": float(losses.mean()),
            "train_accuracy": float(np.mean([m["accuracy"] for m in step_metrics])),
            **{f"test_{k}": v for k, v in test.items()
               if not k.startswith("per_class") and k != "confusion_matrix"},
            "train_images_per_second": steps_per_epoch * config.batch_size / train_seconds,
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        if workdir:
            history_file.write(json.dumps(record) + "\n")
            history_file.flush()
        log(f"epoch {epoch:3d}/{config.num_epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.2%}  |  test loss {test['loss']:.4f} "
            f"acc {test['accuracy']:.2%}  macro-F1 {test['macro_f1']:.4f}  |  "
            f"lr {record['learning_rate']:.4g}  {record['train_images_per_second']:.0f} img/s  "
            f"{record['epoch_seconds']:.1f}s")
    elapsed = time.perf_counter() - start
    log(f"done in {elapsed:.1f}s: test accuracy {history[-1]['test_accuracy']:.2%}")
    if workdir:
        history_file.close()
        _write_json(os.path.join(workdir, "final_metrics.json"),
                    {"epoch": config.num_epochs, "wall_seconds": elapsed,
                     "class_names": list(test_ds.class_names), **test})
    return state, history
