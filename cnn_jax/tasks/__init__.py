"""Tasks: what a kind of problem adds to the shared core, as plain functions in one module each.

    task = get_task("segmentation")
    loss_fn = functools.partial(task.loss, **task.options(config))
    state, metrics = train_step(state, batch, loss_fn=loss_fn, metrics_fn=...)

The loop, train step, parallelism, checkpoints, logs, sweeps and transfer know nothing of a
task beyond this record. A task says:

| field | what |
| --- | --- |
| targets(image_shape) | the batch schema beside 'image': {key: (per-example shape, dtype)} |
| spatial_targets | batch keys geometric transforms move with the image (by nearest neighbour) |
| refused_transforms | {transform: why} that make no sense for its targets |
| options(config) | the config values its loss and counts take, as keyword arguments |
| check_config, check_dataset, check_model | clear errors before any compute |
| loss(logits, batch, **options) | the scalar the train step differentiates |
| train_metrics(logits, batch, **options) | per-step scalars beside loss (at least 'accuracy') |
| eval_counts(logits, batch, **options) | additive counts of one evaluation batch (padding 'mask' == 0 counts for nothing) |
| summarize(counts) | whole-set metrics from the summed counts |
| metrics, best_metric | the scalar metrics of `summarize` (checkpoint.best_metric may be 'val_' + any), the default best |
| log_line(test) | the epoch line's test metrics |

`config.task` picks one; empty means the dataset's (`DATASET_TASKS`, classification by default).
To add a task: write its module here and add a `Task` to `TASKS`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from cnn_jax.tasks import classification, segmentation


class Task(NamedTuple):
    name: str
    targets: Callable
    spatial_targets: tuple[str, ...]
    refused_transforms: dict
    options: Callable
    check_config: Callable
    check_dataset: Callable
    check_model: Callable
    loss: Callable
    train_metrics: Callable
    eval_counts: Callable
    summarize: Callable
    metrics: tuple[str, ...]
    best_metric: str
    log_line: Callable


def _task(module, **fields) -> Task:
    names = ("targets", "options", "check_config", "check_dataset", "check_model", "loss",
             "train_metrics", "eval_counts", "summarize", "log_line")
    return Task(name=module.__name__.rsplit(".", 1)[-1], metrics=module.METRICS,
                **{n: getattr(module, n) for n in names}, **fields)


TASKS: dict[str, Task] = {
    "classification": _task(classification, spatial_targets=(), refused_transforms={},
                            best_metric="val_accuracy"),
    "segmentation": _task(segmentation, spatial_targets=("label",),
                          refused_transforms=segmentation.REFUSED_TRANSFORMS,
                          best_metric="val_mean_iou"),
}
# Datasets whose examples are not classification's; every other dataset is classification.
DATASET_TASKS = {"segmentation_folder": "segmentation", "membrane": "segmentation",
                 "oxford_iiit_pet_seg": "segmentation"}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r} (config.task). Valid choices: "
                         f"{', '.join(TASKS)}, or '' for the dataset's own.")
    return TASKS[name]


def task_name(config) -> str:
    """config.task, or the dataset's task where it is empty."""
    return config.get("task", "") or DATASET_TASKS.get(config.dataset.name, "classification")


def task_of(config) -> Task:
    return get_task(task_name(config))


__all__ = ["Task", "TASKS", "DATASET_TASKS", "get_task", "task_name", "task_of"]
