"""The training loop: `train_and_evaluate(config, workdir)`.

Everything is built and checked (dataset, transforms, model, optimizer, schedule, shapes)
before the first step runs. The input pipeline (grain) yields the batch of each global step;
transforms run on device inside the jitted step, keyed by `fold_in(seed, step)`, so a run's
batches depend on its seed and step alone. After each epoch the loop prints one line and
appends one JSON record to `workdir/metrics.jsonl`; the resolved config goes to
`workdir/config.json` and the final whole-test-set metrics (per class, confusion matrix) to
`workdir/final_metrics.json`.

`config.parallel` picks how the one train step runs over the devices (`parallel.py`);
`config.batch_size` is the global batch, and each process reads its own shard of the data.
With several processes only process 0 logs and writes.
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
from cnn_jax.models import get_model, model_options
from cnn_jax.train.optim import make_optimizer, make_schedule
from cnn_jax.train.parallel import DataParallel, check_batch_sizes
from cnn_jax.train.step import TrainState, create_train_state, eval_step, train_step
from cnn_jax.transfer.setup import setup_transfer


DTYPES = ("float32", "bfloat16", "float16")


def _options(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """A `model`/`dataset` section's options: every key but `name`."""
    return {k: v for k, v in cfg.to_dict().items() if k != "name"}


def validate_config(config: ml_collections.ConfigDict) -> None:
    for key in ("batch_size", "eval_batch_size", "num_epochs", "grad_accum_steps"):
        value = config[key]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{key} must be a positive integer, got {value!r}.")
    lr = config.optimizer.learning_rate
    if not lr > 0:
        raise ValueError(f"config.optimizer.learning_rate must be positive, got {lr!r}.")
    if config.model.get("dtype", "float32") not in DTYPES:
        raise ValueError(f"Unknown config.model.dtype {config.model.dtype!r}. "
                         f"Valid choices: {', '.join(DTYPES)}.")
    if not 0 <= config.label_smoothing < 1:
        raise ValueError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing!r}.")


def model_input_shape(preprocess: Callable, dataset: data_lib.Dataset) -> tuple[int, ...]:
    """The (H, W, C) the model sees: the dataset's images after the transforms."""
    batch = {"image": jax.ShapeDtypeStruct((2, *dataset.image_shape), jnp.uint8),
             "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
    return tuple(jax.eval_shape(preprocess, jax.random.key(0), batch)["image"].shape[1:])


def make_steps(config: ml_collections.ConfigDict, train_preprocess: Callable,
               eval_preprocess: Callable) -> tuple[Callable, Callable]:
    """The train and eval steps with the transforms fused in, as pure functions
    `fn(state, batch, axis_name=None)` for `DataParallel` to compile. The train step draws its
    augmentation key from (seed, step) (and the device, under pmap), so it stays a pure
    function of (state, batch)."""
    augment_rng = jax.random.fold_in(jax.random.key(config.seed), 1)

    def train_fn(state: TrainState, batch: dict, axis_name: str | None = None):
        key = jax.random.fold_in(augment_rng, state.step)
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        return train_step(state, train_preprocess(key, batch), axis_name=axis_name,
                          label_smoothing=config.label_smoothing,
                          accum_steps=config.grad_accum_steps)

    def eval_fn(state: TrainState, batch: dict, axis_name: str | None = None):
        return eval_step(state, eval_preprocess(augment_rng, batch), axis_name=axis_name)

    return train_fn, eval_fn


def evaluate(eval_fn: Callable, state: TrainState, dataset: data_lib.Dataset, batch_size: int,
             num_threads: int = 2, dp: DataParallel | None = None) -> dict:
    """Whole-set metrics of `state` on `dataset`: every example exactly once. `eval_fn` is
    compiled by `dp` (default: one device); `batch_size` is the global batch."""
    dp = dp or DataParallel("none")
    counts = None
    batches = data_lib.eval_batches(dataset, batch_size // jax.process_count(),
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count(), num_threads=num_threads)
    for batch in batches:
        counts = metrics_lib.add_counts(counts, eval_fn(state, dp.put_batch(batch)))
    return metrics_lib.summarize(dp.fetch(counts))


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
    dp = DataParallel(config.parallel)
    sizes = check_batch_sizes(config.batch_size, dp.num_devices)
    check_batch_sizes(config.eval_batch_size, dp.num_devices, what="config.eval_batch_size")
    if sizes["per_device"] % config.grad_accum_steps:
        raise ValueError(f"The per-device batch ({sizes['per_device']}) must be divisible by "
                         f"config.grad_accum_steps={config.grad_accum_steps}.")
    if jax.process_index() != 0:  # one process logs and writes
        log, workdir = (lambda message: None), None
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
    model_kwargs = _options(config.model)
    model_kwargs["dtype"] = jnp.dtype(model_kwargs.get("dtype", "float32"))
    if dp.axis_name and "norm_axis_name" in model_options(config.model.name):
        model_kwargs["norm_axis_name"] = dp.axis_name  # BatchNorm over the global batch
    model = get_model(config.model.name, num_classes=train_ds.num_classes, **model_kwargs)
    steps_per_epoch = data_lib.steps_per_epoch(train_ds, sizes["per_process"], sizes["processes"])
    if steps_per_epoch == 0:
        raise ValueError(f"config.batch_size={config.batch_size} is larger than the "
                         f"{len(train_ds)} training examples.")
    total_steps = config.num_epochs * steps_per_epoch
    schedule = make_schedule(config.schedule, config.optimizer.learning_rate, total_steps,
                             steps_per_epoch)
    tx = make_optimizer(config.optimizer, schedule)
    state = create_train_state(model, tx, jax.random.key(config.seed), input_shape)
    state = setup_transfer(config, state, schedule, log)  # config.transfer; a no-op by default
    state = dp.put_state(state)
    train_fn, eval_fn = make_steps(config, train_preprocess, eval_preprocess)
    p_train_step, p_eval_step = dp.train_step(train_fn), dp.eval_step(eval_fn)
    batches = data_lib.train_iterator(train_ds, sizes["per_process"], seed=config.seed,
                                      num_epochs=config.num_epochs,
                                      process_index=jax.process_index(),
                                      process_count=sizes["processes"],
                                      num_threads=config.input_threads)

    num_params = sum(p.size for p in jax.tree.leaves(dp.get_state(state).params))
    log(f"{config.model.name}: {num_params:,} parameters | {config.dataset.name}: "
        f"{len(train_ds)} train / {len(test_ds)} test, {train_ds.image_shape} -> {input_shape} | "
        f"{config.num_epochs} epochs x {steps_per_epoch} steps of {config.batch_size}")
    log(f"parallel={config.parallel}: {sizes['devices']} device(s) "
        f"({jax.devices()[0].platform}) in {sizes['processes']} process(es); batch "
        f"{sizes['global']} global, {sizes['per_process']} per process, {sizes['per_device']} per "
        f"device" + (f" in {config.grad_accum_steps} micro-batches of "
                     f"{sizes['per_device'] // config.grad_accum_steps}"
                     if config.grad_accum_steps > 1 else "") + f"; compute in {config.model.dtype}")
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
            state, m = p_train_step(state, dp.put_batch(next(batches)))
            step_metrics.append(m)
        step_metrics = dp.fetch(step_metrics)  # one sync per epoch, not per step
        losses = np.array([m["loss"] for m in step_metrics])
        _check_finite(losses, (epoch - 1) * steps_per_epoch + 1, epoch, config)
        train_seconds = time.perf_counter() - epoch_start
        test = evaluate(p_eval_step, state, test_ds, config.eval_batch_size, config.input_threads,
                        dp)
        record = {
            "epoch": epoch,
            "step": epoch * steps_per_epoch,
            "learning_rate": float(schedule(epoch * steps_per_epoch - 1)),
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
    return dp.get_state(state), history
