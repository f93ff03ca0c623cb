"""Model selection on the validation split: which epoch is best, when early stopping stops, and
the config checks that keep the test split out of both.

Every epoch's record (`metrics.jsonl`) holds `train_*`, `val_*` (with a validation split) and,
at the last epoch (or every epoch with `config.eval_test_every_epoch`), `test_*`; a run that
keeps an EMA of its weights (`config.ema.decay` > 0) records `val_ema_*` and `test_ema_*`, its
average's, beside them. The best
checkpoint (`config.checkpoint.best_metric`) and early stopping (`config.early_stopping`) read
`val_*` or `train_*` metrics only: choosing on the test split would make its figure optimistic.
Both are pure functions of the history, so a resumed run decides exactly as an uninterrupted one.
"""

from __future__ import annotations

import ml_collections

from cnn_jax.config import ema_options

EVAL_METRICS = ("accuracy", "loss", "top5_accuracy", "macro_f1", "macro_precision",
                "macro_recall")
SELECTABLE = ("train_loss", "train_accuracy", *(f"val_{m}" for m in EVAL_METRICS))
EPOCH_METRICS = (*SELECTABLE, *(f"test_{m}" for m in EVAL_METRICS),  # those of metrics.jsonl
                 *(f"{split}_ema_{m}" for split in ("val", "test") for m in EVAL_METRICS))


def higher_is_better(metric: str) -> bool:
    return not metric.endswith("loss")


def selectable(eval_metrics=EVAL_METRICS, ema: bool = False) -> tuple[str, ...]:
    """What may be selected on, for a task whose evaluation gives `eval_metrics` (and with
    `ema`, for a run that keeps an EMA of its weights)."""
    return ("train_loss", "train_accuracy", *(f"val_{m}" for m in eval_metrics),
            *(f"val_ema_{m}" for m in eval_metrics if ema))


def _check_metric(metric: str, key: str, eval_metrics=EVAL_METRICS, ema: bool = False) -> None:
    valid = selectable(eval_metrics, ema)
    if metric.startswith("val_ema_") and not ema and metric in selectable(eval_metrics, True):
        raise ValueError(f"config.{key}={metric!r} selects on the moving average of the "
                         "weights, which this run does not keep (config.ema.decay=0): set "
                         f"config.ema.decay, e.g. 0.999, or select on "
                         f"{metric.replace('val_ema_', 'val_', 1)!r}.")
    if metric.startswith("test_"):
        raise ValueError(f"config.{key}={metric!r} would select on the test split (test-set "
                         f"leakage); select on validation instead, e.g. "
                         f"{metric.replace('test_', 'val_', 1)!r}. Valid choices: "
                         f"{', '.join(valid)}.")
    if metric not in valid:
        raise ValueError(f"Unknown config.{key} {metric!r}. Valid choices: "
                         f"{', '.join(valid)}.")


def check_config(config: ml_collections.ConfigDict, eval_metrics=EVAL_METRICS) -> None:
    """The validation and selection keys; raises ValueError naming the key. `eval_metrics`:
    the task's (`cnn_jax.tasks`)."""
    missing = [k for k in ("validation_fraction", "validation_seed", "eval_test_every_epoch",
                           "early_stopping") if k not in config]
    if missing:
        raise ValueError(f"The config has no {', '.join(missing)}: it was written before model "
                         "selection moved to a validation split. Add them as in "
                         "cnn_jax.config.default_config().")
    fraction = config.validation_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
            0 <= fraction < 1):
        raise ValueError(f"config.validation_fraction must be in [0, 1), got {fraction!r}.")
    ema = ema_options(config)["decay"] > 0
    if config.checkpoint.best_metric:
        _check_metric(config.checkpoint.best_metric, "checkpoint.best_metric", eval_metrics, ema)
    stopping = config.early_stopping
    if not isinstance(stopping.patience, int) or stopping.patience < 0:
        raise ValueError(f"config.early_stopping.patience must be an integer >= 0 (0: off), got "
                         f"{stopping.patience!r}.")
    if not stopping.min_delta >= 0:
        raise ValueError(f"config.early_stopping.min_delta must be >= 0, got "
                         f"{stopping.min_delta!r}.")
    if stopping.patience:
        _check_metric(stopping.metric, "early_stopping.metric", eval_metrics, ema)


def best_record(history: list[dict], metric: str, mode: str = "max") -> dict | None:
    """The epoch record with the best `metric`, the latest of ties (as orbax keeps the best
    checkpoint); None if no record has it."""
    records = [r for r in history if metric in r]
    if not records:
        return None
    sign = 1 if mode == "max" else -1
    return max(reversed(records), key=lambda r: sign * r[metric])  # max keeps the first seen


def early_stop_epoch(history: list[dict], metric: str, patience: int, min_delta: float
                     ) -> int | None:
    """The epoch early stopping stops at: the first where `patience` epochs in a row have not
    improved `metric` by more than `min_delta` on its best so far (lower is better for losses,
    higher for the rest). None: not (yet), or `patience` 0 (off)."""
    if not patience:
        return None
    higher = higher_is_better(metric)
    best, waited = None, 0
    for record in history:
        if metric not in record:
            continue
        value = record[metric]
        if best is None or (value > best + min_delta if higher else value < best - min_delta):
            best, waited = value, 0
        else:
            waited += 1
            if waited >= patience:
                return record["epoch"]
    return None


def describe(val_source: str, num_val: int, config: ml_collections.ConfigDict) -> str:
    """The log line that says what the run selects on."""
    test_when = "every epoch" if config.eval_test_every_epoch else "at the end only"
    if num_val == 0:
        return ("No validation split (the dataset has none and config.validation_fraction=0): "
                "this run selects nothing on held-out data (no best checkpoint, no early "
                f"stopping); the test split is evaluated {test_when}.")
    selected = []
    if config.checkpoint.best_metric:
        selected.append(f"best checkpoint by {config.checkpoint.best_metric}")
    if config.early_stopping.patience:
        stopping = config.early_stopping
        selected.append(f"early stopping on {stopping.metric} (patience {stopping.patience}, "
                        f"min_delta {stopping.min_delta})")
    return (f"validation: {num_val} examples ({val_source}); "
            f"{', '.join(selected) or 'nothing selected on it'}; test evaluated {test_when}.")


def final_line(last: dict, test: dict, best: dict | None, test_ema: dict | None = None) -> str:
    """The run's last log line: the test split on the last state (and its EMA weights) and on
    the best checkpoint."""
    val = f"validation {last['val_accuracy']:.2%}, " if "val_accuracy" in last else ""
    line = f"epoch {last['epoch']} (last): {val}test accuracy {test['accuracy']:.2%}"
    if test_ema is not None and "accuracy" in test_ema:
        line += f" (EMA weights {test_ema['accuracy']:.2%})"
    if best is not None and "accuracy" in best:
        metric = best["selected_by"]
        value = f"{best[metric]:.2%}" if metric.endswith("accuracy") else f"{best[metric]:.4g}"
        line += (f" | best by {metric}: epoch {best['epoch']} ({metric} {value}), test accuracy "
                 f"{best['accuracy']:.2%}")
    return line
