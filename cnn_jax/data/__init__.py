"""The dataset registry: `get_dataset(name, split, **options)` returns a `Dataset`.

| name | what | options |
| --- | --- | --- |
| digits | scikit-learn's 8x8 digits, embedded (no download) | image_size |
| mnist, fashion_mnist, cifar10, cifar100, imagenette, imagenet2012 | TFDS, prepared once with `python -m cnn_jax.data.prepare NAME` | data_dir, image_size |
| image_folder | `root/<class>/**/*.{jpg,png,webp,...}` (torchvision's ImageFolder layout) | root, image_size, channels, test_fraction, split_seed, verify, exif_transpose, background, cache, cache_dir |
| subset | some classes of another dataset, relabeled, optionally few training examples each | base, classes, train_per_class, subset_seed, data_dir, image_size |

`split` is "train", "test", or "validation": the dataset's own validation split, or
`MissingSplit` where it has none (the training loop then carves one from "train": splits.py).

To add a dataset: write a loader `load(split, **options) -> Dataset` in this folder and add it
to `DATASETS`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

from cnn_jax.data.dataset import ArraySource, Dataset, MissingSplit, check_labels, from_arrays
from cnn_jax.data.digits import load_digits
from cnn_jax.data.image_folder import load_image_folder
from cnn_jax.data.pipeline import (eval_batches, split_for_devices, steps_per_epoch, train_dataset,
                                   train_iterator)
from cnn_jax.data.subset import load_subset
from cnn_jax.data.tfds_datasets import TFDS_DATASETS, load_tfds

DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "image_folder": load_image_folder,
    **{name: functools.partial(load_tfds, name=name) for name in TFDS_DATASETS},
    "subset": load_subset,
}


def dataset_options(name: str) -> list[str]:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Valid choices: {', '.join(sorted(DATASETS))}.")
    loader = DATASETS[name]
    fixed = set(loader.keywords) if isinstance(loader, functools.partial) else set()
    return [p for p in inspect.signature(loader).parameters if p not in fixed | {"split"}]


def get_dataset(name: str, split: str, **options) -> Dataset:
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for dataset {name!r}. "
                         f"Valid options: {', '.join(valid) or 'none'}.")
    return DATASETS[name](split, **options)


__all__ = ["ArraySource", "Dataset", "MissingSplit", "DATASETS", "get_dataset", "dataset_options", "from_arrays",
           "check_labels", "train_dataset", "train_iterator", "eval_batches", "steps_per_epoch",
           "split_for_devices"]
