"""The training loop: `train_and_evaluate(config, workdir)`.

Everything is built and checked (dataset, transforms, model, optimizer, schedule, shapes)
before the first step runs. The input pipeline (grain) yields the batch of each global step;
transforms run on device inside the jitted step, keyed by `fold_in(seed, step)`, so a run's
batches depend on its seed and step alone.

What a run writes in its workdir:
    checkpoints/<step>/   orbax checkpoints at each epoch's end and every
                          `config.checkpoint.every_steps` (see checkpoint.py)
    steps.jsonl           train scalars every `config.log_every_steps` steps
    metrics.jsonl         one record per epoch: train and whole-validation-set metrics (the
                          test split's at the last epoch, or every epoch if asked)
    tensorboard/          the same scalars as TensorBoard event files
    final_metrics.json    the test split's metrics, per class, with the confusion matrix, of
                          the last state and of the checkpoint best on validation
    config.json, config.py, environment.json   (see workdir.py)

A run started on a workdir with checkpoints resumes from the latest good one and ends exactly
as the uninterrupted run would (bit-identical on CPU): the state, the position in the data and
the epoch's running train sums all come from the checkpoint. SIGTERM/SIGINT save a checkpoint
at the next step boundary and raise `Preempted` (within two steps, a second signal ends the
process at once: stopping.py); a loss or gradient norm that is not finite raises
FloatingPointError before anything after it is saved. One run at a time holds a workdir
(`run.lock`, workdir.py); rerunning a finished run changes nothing.

`config.parallel` picks how the one train step runs over the devices (`parallel.py`);
`config.batch_size` is the global batch, and each process reads its own shard of the data.
With several processes only process 0 logs and writes.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from cnn_jax import data as data_lib
from cnn_jax import metrics as metrics_lib
from cnn_jax.config import check_config, ema_options
from cnn_jax.data.splits import validation_split
from cnn_jax.data.transforms import make_preprocess
from cnn_jax.models import get_model, model_options
from cnn_jax.tasks import TASKS, Task, task_of
from cnn_jax.train import selection
from cnn_jax.train.checkpoint import Checkpointer, restore_variables, state_tree, with_tree
from cnn_jax.train.logs import MetricWriter, Progress
from cnn_jax.train.optim import make_optimizer, make_schedule
from cnn_jax.train.parallel import DataParallel, check_batch_sizes
from cnn_jax.train.step import (TrainState, create_train_state, ema_view, eval_step, train_step,
                                 with_ema)
from cnn_jax.train.stopping import StopSignals, stop_requested
from cnn_jax.train.workdir import (check_same_run, locks_workdir, repair_logs, write_json,
                                   write_run_files)
from cnn_jax.transfer.setup import setup_transfer


DTYPES = ("float32", "bfloat16", "float16")
EPOCH_METRICS = selection.EPOCH_METRICS


def task_transform_options(task: Task, config) -> dict:
    """What the transforms need to know of the task: the targets they move with the image, the
    value padding gives them, the transforms the task refuses."""
    if not task.spatial_targets:
        return {}
    return {"targets": task.spatial_targets, "fill": config.segmentation.ignore_value,
            "refused": {k: f"{v} (config.task={task.name!r})"
                        for k, v in task.refused_transforms.items()}}


def _options(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """A `model`/`dataset` section's options: every key but `name`."""
    return {k: v for k, v in cfg.to_dict().items() if k != "name"}


def validate_config(config: ml_collections.ConfigDict) -> None:
    check_config(config)  # cnn_jax/config.py: names, options, schedule, input threads
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
    if config.log_every_steps < 1 or config.checkpoint.every_steps < 0:
        raise ValueError("config.log_every_steps must be positive and config.checkpoint.every_steps"
                         " non-negative.")
    task = task_of(config)
    selection.check_config(config, task.metrics)  # validation_fraction, best_metric, early_stopping
    task.check_config(config)


def epoch_metrics(task: Task) -> tuple[str, ...]:
    """The metrics.jsonl scalars `config.checkpoint.best_metric` may name."""
    return selection.selectable(task.metrics)


def model_input_shape(preprocess: Callable, dataset: data_lib.Dataset,
                      task: Task | None = None) -> tuple[int, ...]:
    """The (H, W, C) the model sees: the dataset's images after the transforms."""
    targets = (task or TASKS["classification"]).targets(dataset.image_shape)
    batch = {"image": jax.ShapeDtypeStruct((2, *dataset.image_shape), jnp.uint8),
             **{k: jax.ShapeDtypeStruct((2, *shape), dtype) for k, (shape, dtype) in targets.items()}}
    return tuple(jax.eval_shape(preprocess, jax.random.key(0), batch)["image"].shape[1:])


def check_model(task: Task, model, input_shape: tuple[int, ...], num_classes: int,
                name: str) -> None:
    """The model's logits for `input_shape` fit the task (shapes only: nothing is computed)."""
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    logits, _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False), x)
    task.check_model(tuple(logits.shape), input_shape, num_classes, name)


def make_steps(config: ml_collections.ConfigDict, train_preprocess: Callable,
               eval_preprocess: Callable, task: Task | None = None) -> tuple[Callable, Callable]:
    """The train and eval steps with the transforms fused in, as pure functions
    `fn(state, batch, axis_name=None)` for `DataParallel` to compile. The train step draws its
    augmentation key from (seed, step) (and the device, under pmap), so it stays a pure
    function of (state, batch)."""
    augment_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
    task = task or task_of(config)
    options = task.options(config)
    loss_fn = functools.partial(task.loss, **options)
    metrics_fn = functools.partial(task.train_metrics, **options)
    counts_fn = functools.partial(task.eval_counts, **options)
    ema = ema_options(config)

    def train_fn(state: TrainState, batch: dict, axis_name: str | None = None):
        key = jax.random.fold_in(augment_rng, state.step)
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        return train_step(state, train_preprocess(key, batch), axis_name=axis_name,
                          accum_steps=config.grad_accum_steps, loss_fn=loss_fn,
                          metrics_fn=metrics_fn, ema_decay=ema["decay"], ema_warmup=ema["warmup"])

    def eval_fn(state: TrainState, batch: dict, axis_name: str | None = None):
        return eval_step(state, eval_preprocess(augment_rng, batch), axis_name=axis_name,
                         counts_fn=counts_fn)

    return train_fn, eval_fn


def evaluate(eval_fn: Callable, state: TrainState, dataset: data_lib.Dataset, batch_size: int,
             num_threads: int = 2, dp: DataParallel | None = None,
             summarize: Callable = metrics_lib.summarize) -> dict:
    """Whole-set metrics of `state` on `dataset`: every example exactly once. `eval_fn` is
    compiled by `dp` (default: one device); `batch_size` is the global batch; `summarize`
    is the task's."""
    dp = dp or DataParallel("none")
    counts = None
    batches = data_lib.eval_batches(dataset, batch_size // jax.process_count(),
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count(), num_threads=num_threads)
    for batch in batches:
        counts = metrics_lib.add_counts(counts, eval_fn(state, dp.put_batch(batch)))
    return summarize(dp.fetch(counts))


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; rerunning resumes it."""


def _check_finite(step_metrics: list[dict], first_step: int, steps_per_epoch: int, config,
                  last_checkpoint: str, schedule: Callable) -> None:
    for i, m in enumerate(step_metrics):
        bad = [k for k in ("loss", "grad_norm", "param_norm") if not np.isfinite(m[k])]
        if bad:
            step = first_step + i
            raise FloatingPointError(
                f"The training {bad[0].replace('_', ' ')} became {m[bad[0]]} at step {step} (epoch "
                f"{(step - 1) // steps_per_epoch + 1}); {last_checkpoint}. The learning rate was "
                f"{float(schedule(step - 1)):.4g} at that step (config.optimizer.learning_rate="
                f"{config.optimizer.learning_rate} on the {config.schedule.name} schedule): lower "
                "it, or clip gradients (--config.optimizer.grad_clip_norm).")


def _scalars(prefix: str, metrics: dict | None) -> dict:
    """`metrics`' scalars as `<prefix>_<name>` (no per-class lists, no confusion matrix)."""
    return {f"{prefix}_{k}": v for k, v in (metrics or {}).items()
            if not k.startswith("per_class") and k != "confusion_matrix"}


def _epoch_record(epoch: int, step: int, sums: dict, val: dict | None, learning_rate: float,
                  images_per_second: float, seconds: float, val_ema: dict | None = None) -> dict:
    return {
        "epoch": epoch,
        "step": step,
        "learning_rate": learning_rate,
        "train_loss": sums["loss"] / sums["count"],
        "train_accuracy": sums["accuracy"] / sums["count"],
        **_scalars("val", val),
        **_scalars("val_ema", val_ema),
        "train_images_per_second": images_per_second,
        "epoch_seconds": seconds,
    }


def _epoch_line(record: dict, num_epochs: int, task: Task = TASKS["classification"]) -> str:
    parts = [f"epoch {record['epoch']:3d}/{num_epochs}  train loss {record['train_loss']:.4f} acc "
             f"{record['train_accuracy']:.2%}"]
    for split in ("val", "test"):
        if f"{split}_loss" in record:
            metrics = {k[len(split) + 1:]: v for k, v in record.items() if k.startswith(split)}
            parts.append(f"{split} loss {record[f'{split}_loss']:.4f} {task.log_line(metrics)}")
        if f"{split}_ema_loss" in record:
            metrics = {k[len(split) + 5:]: v for k, v in record.items()
                       if k.startswith(f"{split}_ema_")}
            parts.append(f"{split} EMA {task.log_line(metrics)}")
    parts.append(f"lr {record['learning_rate']:.4g}  {record['train_images_per_second']:.0f} "
                 f"img/s  {record['epoch_seconds']:.1f}s")
    return "  |  ".join(parts)


def _resume(config, workdir: str | None, state: TrainState, is_main: bool, log: Callable,
            total_steps: int) -> tuple[Checkpointer | None, TrainState, int, dict, list[dict]]:
    """The checkpointer of `workdir` (None without one) and where training starts: the fresh
    `state` at step 0, or the latest good checkpoint's state, step, epoch sums and history
    if the workdir holds a run of this config. A workdir without checkpoints (a run that
    failed before its first save) starts over with any config."""
    epoch_sums = {"loss": 0.0, "accuracy": 0.0, "count": 0}
    if not workdir:
        return None, state, 0, epoch_sums, []
    ckpt_dir = os.path.join(workdir, "checkpoints")
    saved_config = os.path.join(workdir, "config.json")
    if os.path.isdir(ckpt_dir) and not config.resume:
        if is_main:
            log(f"resume=False: discarding the checkpoints in {ckpt_dir}")
            shutil.rmtree(ckpt_dir)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("cnn_jax: old checkpoints discarded")
    ckpt = Checkpointer(ckpt_dir, keep=config.checkpoint.keep,
                        best_metric=config.checkpoint.best_metric,
                        best_mode=config.checkpoint.best_mode)
    if ckpt.steps() and os.path.exists(saved_config):  # before a restore that would not fit
        with open(saved_config) as f:
            check_same_run(json.load(f), config.to_dict(), workdir)
    restored = ckpt.restore_latest(state_tree(state))
    if not restored:
        return ckpt, state, 0, epoch_sums, []
    tree, meta = restored
    check_same_run(meta["config"], config.to_dict(), workdir)
    if meta["step"] < total_steps:
        log(f"Resuming from the checkpoint of step {meta['step']} in {ckpt_dir}")
    return ckpt, with_tree(state, tree), meta["step"], meta["epoch_sums"], meta["history"]


@locks_workdir  # two runs never share a workdir
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None,
                       log: Callable[[str], None] = functools.partial(print, flush=True)
                       ) -> tuple[TrainState, list[dict]]:
    """Trains `config`, evaluating on the test split after every epoch, and checkpointing into
    `workdir` (see the module docstring). Returns the final state and the per-epoch history
    (what `metrics.jsonl` holds). `workdir=None` writes nothing.

    Raises WorkdirLocked if another run holds `workdir`, `Preempted` after SIGTERM/SIGINT (a
    checkpoint saved), FloatingPointError when the loss or gradient norm stops being finite
    (the last good checkpoint kept).
    """
    validate_config(config)
    dp = DataParallel(config.parallel)
    sizes = check_batch_sizes(config.batch_size, dp.num_devices)
    check_batch_sizes(config.eval_batch_size, dp.num_devices, what="config.eval_batch_size")
    if sizes["per_device"] % config.grad_accum_steps:
        raise ValueError(f"The per-device batch ({sizes['per_device']}) must be divisible by "
                         f"config.grad_accum_steps={config.grad_accum_steps}.")
    is_main = jax.process_index() == 0  # one process logs and writes; all of them checkpoint
    if not is_main:
        log = lambda message: None  # noqa: E731
    task = task_of(config)
    options = _options(config.dataset)
    train_ds = data_lib.get_dataset(config.dataset.name, "train", **options)
    test_ds = data_lib.get_dataset(config.dataset.name, "test", **options)
    for split, ds in (("train", train_ds), ("test", test_ds)):
        task.check_dataset(ds, f"dataset {config.dataset.name!r} ({split})")
    train_ds, val_ds, val_source = validation_split(config.dataset.name, options, train_ds,
                                                    config.validation_fraction,
                                                    config.validation_seed)
    early = config.early_stopping
    if early.patience and val_ds is None and early.metric.startswith("val_"):
        raise ValueError(f"config.early_stopping.metric={early.metric!r} needs a validation "
                         f"split: {config.dataset.name!r} has none of its own and "
                         "config.validation_fraction=0; set a fraction > 0 (or patience 0).")
    stats = dict(num_classes=train_ds.num_classes, mean=train_ds.mean, std=train_ds.std,
                 **task_transform_options(task, config))
    train_preprocess = make_preprocess(config.train_transforms, **stats)
    eval_preprocess = make_preprocess(config.eval_transforms, train=False, **stats)
    input_shape = model_input_shape(train_preprocess, train_ds, task)
    eval_shape = model_input_shape(eval_preprocess, test_ds, task)
    if task.spatial_targets and eval_shape[2:] == input_shape[2:]:
        pass  # dense predictions: a fully convolutional model may evaluate at another size
    elif eval_shape != input_shape:
        raise ValueError(f"Training images reach the model as {input_shape} but test images as "
                         f"{eval_shape}; make config.eval_transforms produce {input_shape}.")
    model_kwargs = _options(config.model)
    model_kwargs["dtype"] = jnp.dtype(model_kwargs.get("dtype", "float32"))
    if dp.axis_name and "norm_axis_name" in model_options(config.model.name):
        model_kwargs["norm_axis_name"] = dp.axis_name  # BatchNorm over the global batch
    model = get_model(config.model.name, num_classes=train_ds.num_classes, **model_kwargs)
    check_model(task, model, input_shape, train_ds.num_classes, config.model.name)
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
    if ema_options(config)["decay"] > 0:
        state = with_ema(state)  # of the weights training starts from (transfer's included)

    ckpt, state, start_step, epoch_sums, history = _resume(config, workdir, state, is_main, log,
                                                           total_steps)
    stopped_early_before = bool(selection.early_stop_epoch(history, early.metric, early.patience,
                                                           early.min_delta))
    if workdir and (start_step == total_steps or stopped_early_before) and os.path.exists(
            os.path.join(workdir, "final_metrics.json")):  # a finished run: leave it as it is
        ckpt.close()
        log(f"The run in {workdir} is finished (step {start_step} of {total_steps}); nothing to do. "
            "Its results: "
            f"{os.path.join(workdir, 'final_metrics.json')} and metrics.jsonl (plots: python -m "
            f"experiments.report {workdir}).")
        return state, history
    state = dp.put_state(state)
    train_fn, eval_fn = make_steps(config, train_preprocess, eval_preprocess, task)
    p_train_step, p_eval_step = dp.train_step(train_fn), dp.eval_step(eval_fn)
    evaluate_on = functools.partial(evaluate, p_eval_step, batch_size=config.eval_batch_size,
                                    num_threads=config.input_threads, dp=dp,
                                    summarize=task.summarize)  # evaluate_on(state, dataset)
    batches = data_lib.train_iterator(train_ds, sizes["per_process"], seed=config.seed,
                                      num_epochs=config.num_epochs, start_step=start_step,
                                      process_index=jax.process_index(),
                                      process_count=sizes["processes"],
                                      num_threads=config.input_threads)

    num_params = sum(p.size for p in jax.tree.leaves(dp.get_state(state).params))
    log(f"{config.model.name}: {num_params:,} parameters | {config.dataset.name}: "
        f"{len(train_ds)} train / {len(val_ds or ())} validation / {len(test_ds)} test, "
        f"{train_ds.image_shape} -> {input_shape} | "
        f"{config.num_epochs} epochs x {steps_per_epoch} steps of {config.batch_size}")
    log(f"parallel={config.parallel}: {sizes['devices']} device(s) "
        f"({jax.devices()[0].platform}) in {sizes['processes']} process(es); batch "
        f"{sizes['global']} global, {sizes['per_process']} per process, {sizes['per_device']} per "
        f"device" + (f" in {config.grad_accum_steps} micro-batches of "
                     f"{sizes['per_device'] // config.grad_accum_steps}"
                     if config.grad_accum_steps > 1 else "") + f"; compute in {config.model.dtype}")
    log(selection.describe(val_source, len(val_ds or ()), config))
    writer = None
    if workdir and is_main:
        os.makedirs(workdir, exist_ok=True)
        write_run_files(workdir, config.to_dict(), start_step)
        if start_step:
            repair_logs(workdir, start_step, history)  # the checkpoint is trusted over the logs
        writer = MetricWriter(workdir, resume_step=start_step)
    progress = Progress(total_steps, start_step, batch_size=config.batch_size, log=log,
                        interactive=None if is_main else False)
    last_saved = start_step or None
    last_step = total_steps
    if stopped_early_before:
        last_step = start_step  # resumed after early stopping stopped: nothing left to train
    test, test_ema, pending, first_pending = None, None, [], start_step + 1
    start = epoch_start = interval_start = time.perf_counter()
    epoch_first_step = start_step
    try:
        with StopSignals() as stop:
            for step in range(start_step + 1, last_step + 1):  # step: steps done after this one
                state, m = p_train_step(state, dp.put_batch(next(batches)))
                stop.dispatched(step, m)  # at most one step queued: a stop within two steps
                progress.tick(step)  # no sync: the progress line's clock
                pending.append(m)
                stopping = stop_requested(stop, step, config.log_every_steps)
                epoch_end = step % steps_per_epoch == 0
                save = ckpt is not None and (epoch_end or stopping is not None or (
                    config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0))
                if len(pending) >= config.log_every_steps or save or epoch_end:
                    fetched = dp.fetch(pending)  # one sync per interval, not per step
                    _check_finite(fetched, first_pending, steps_per_epoch, config,
                                  f"the last good checkpoint is step {last_saved} in "
                                  f"{ckpt.directory}" if last_saved else "no checkpoint was saved",
                                  schedule)
                    for m in fetched:
                        epoch_sums = {"loss": epoch_sums["loss"] + float(m["loss"]),
                                      "accuracy": epoch_sums["accuracy"] + float(m["accuracy"]),
                                      "count": epoch_sums["count"] + 1}
                    now = time.perf_counter()
                    rate = len(fetched) / (now - interval_start)
                    if writer:
                        writer.write("steps", step, {
                            "loss": float(np.mean([m["loss"] for m in fetched])),
                            "accuracy": float(np.mean([m["accuracy"] for m in fetched])),
                            "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
                            "param_norm": float(fetched[-1]["param_norm"]),
                            "learning_rate": float(schedule(step - 1)),
                            "steps_per_second": rate,
                            "images_per_second": rate * config.batch_size})
                    progress.update(step, float(fetched[-1]["loss"]))
                    pending, first_pending, interval_start = [], step + 1, now
                record, stopped_early = None, None
                if epoch_end:
                    epoch = step // steps_per_epoch
                    train_seconds = time.perf_counter() - epoch_start
                    val = None if val_ds is None else evaluate_on(state, val_ds)
                    val_ema = (None if val_ds is None or state.ema is None
                               else evaluate_on(ema_view(state), val_ds))
                    record = _epoch_record(epoch, step, epoch_sums, val,
                                           float(schedule(step - 1)),
                                           (step - epoch_first_step) * config.batch_size
                                           / train_seconds, 0.0, val_ema)
                    stopped_early = selection.early_stop_epoch(
                        history + [record], early.metric, early.patience, early.min_delta)
                    if config.eval_test_every_epoch or step == total_steps or stopped_early:
                        test = evaluate_on(state, test_ds)
                        record.update(_scalars("test", test))
                        if state.ema is not None:
                            test_ema = evaluate_on(ema_view(state), test_ds)
                            record.update(_scalars("test_ema", test_ema))
                    record["epoch_seconds"] = time.perf_counter() - epoch_start
                    history.append(record)
                    if writer:
                        writer.write("metrics", step, {k: v for k, v in record.items()
                                                       if k != "step"})
                    progress.log(_epoch_line(record, config.num_epochs, task))
                    epoch_sums = {"loss": 0.0, "accuracy": 0.0, "count": 0}
                    epoch_start = interval_start = time.perf_counter()
                    epoch_first_step = step
                if save:
                    meta = {"config": config.to_dict(), "data": {"next_step": step},
                            "epoch_sums": epoch_sums, "history": history}
                    best = config.checkpoint.best_metric
                    ckpt.save(step, state_tree(dp.get_state(state)), meta,
                              metrics={best: record[best]} if best in (record or {}) else None)
                    last_saved = step
                if stopped_early:
                    log(f"Early stopping after epoch {stopped_early}: {early.metric} did not "
                        f"improve by more than {early.min_delta} in {early.patience} "
                        "epoch(s).")
                    break
                if stopping:
                    ckpt_note = (f"saved a checkpoint at step {step} in {ckpt.directory}; run the "
                                 "same command again to resume" if ckpt else
                                 "no workdir, so nothing was saved")
                    raise Preempted(f"Stopped by {stopping} after step {step}: {ckpt_note}.")
    finally:
        progress.close()
        if ckpt:
            ckpt.wait()
            ckpt.close()
        if writer:
            writer.close()
    evaluate_test = functools.partial(evaluate_on, dataset=test_ds)
    if test is None:  # resumed after the last step: nothing left to train
        test = evaluate_test(state=state)
    if test_ema is None and state.ema is not None:
        test_ema = evaluate_test(state=ema_view(state))
    best = _best_checkpoint_test(config, workdir, history, state, dp, evaluate_test, test,
                                 test_ema)
    elapsed = time.perf_counter() - start
    last = history[-1] if history else {"epoch": 0, "step": 0}
    log(f"done in {elapsed:.1f}s: " + selection.final_line(last, test, best, test_ema))
    if workdir and is_main:
        write_json(os.path.join(workdir, "final_metrics.json"), {
            "checkpoint": "last", "epoch": last["epoch"], "step": last["step"],
            "stopped_early": last["step"] < total_steps, "wall_seconds": elapsed,
            "validation": {k[4:]: v for k, v in last.items()
                           if k.startswith("val_") and not k.startswith("val_ema_")},
            "class_names": list(test_ds.class_names), **test, "best": best,
            **({} if test_ema is None else {"ema": {
                "validation": {k[8:]: v for k, v in last.items() if k.startswith("val_ema_")},
                **test_ema}})})
    return dp.get_state(state), history


def _best_checkpoint_test(config, workdir: str | None, history: list[dict], state: TrainState,
                          dp: DataParallel, evaluate_test: Callable, last_test: dict,
                          last_test_ema: dict | None = None) -> dict | None:
    """The test metrics of the checkpoint best by `config.checkpoint.best_metric` (chosen on
    validation), with its epoch, step and metric; None when nothing was selected. Selected by
    a `val_ema_*` metric, those of the checkpoint's EMA weights."""
    metric, mode = config.checkpoint.best_metric, config.checkpoint.best_mode
    record = selection.best_record(history, metric, mode) if metric else None
    if record is None:
        return None
    step = record["step"]
    if workdir and step != history[-1]["step"]:
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True,
                            best_metric=metric, best_mode=mode)
        try:
            step = ckpt.best_step() or step  # orbax's pick: the same one
        finally:
            ckpt.close()
        record = next(r for r in history if r["step"] == step)
    about = {"epoch": record["epoch"], "step": step, "selected_by": metric,
             metric: record[metric]}
    ema = metric.startswith("val_ema_")
    if ema:
        about["weights"] = "ema"
    if step == history[-1]["step"]:
        return {**about, **(last_test_ema if ema else last_test)}
    if not workdir:
        return {**about, "not_evaluated": "no workdir, so no checkpoint of that epoch"}
    variables, _ = restore_variables(workdir, step=step, ema=ema)
    host = dp.get_state(state)
    best_state = host.replace(params=variables["params"],
                              batch_stats=variables.get("batch_stats", host.batch_stats))
    return {**about, **evaluate_test(state=dp.put_state(best_state))}
