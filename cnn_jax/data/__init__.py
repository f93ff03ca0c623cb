"""The dataset registry: `get_dataset(name, split, **options)` returns an `ArrayDataset`.

To add a dataset: write a loader `load(split, **options) -> ArrayDataset` in this folder and
add it to `DATASETS`.
"""

from __future__ import annotations

import inspect
from typing import Callable

from cnn_jax.data.dataset import (ArrayDataset, check_labels, eval_batches, steps_per_epoch,
                                  train_batches)
from cnn_jax.data.digits import load_digits

DATASETS: dict[str, Callable[..., ArrayDataset]] = {
    "digits": load_digits,
}


def get_dataset(name: str, split: str, **options) -> ArrayDataset:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Valid choices: {', '.join(sorted(DATASETS))}.")
    loader = DATASETS[name]
    valid = [p for p in inspect.signature(loader).parameters if p != "split"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for dataset {name!r}. "
                         f"Valid options: {', '.join(valid) or 'none'}.")
    return loader(split, **options)


__all__ = ["ArrayDataset", "DATASETS", "get_dataset", "check_labels", "train_batches",
           "eval_batches", "steps_per_epoch"]
