"""The dataset interface: an in-memory split and the batches a run draws from it.

A loader returns an `ArrayDataset` (images NHWC float32, integer labels). Training batches
are a fresh permutation each epoch, derived from (seed, epoch) alone, so a given epoch's
batches never depend on what ran before. Evaluation batches cover every example exactly
once: the last batch is padded and its padding carries `mask == 0`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    images: np.ndarray  # (N, H, W, C) float32
    labels: np.ndarray  # (N,) int32, in [0, num_classes)
    class_names: tuple[str, ...]
    name: str = ""

    def __post_init__(self):
        if self.images.ndim != 4:
            raise ValueError(f"Dataset {self.name!r}: images must be (N, H, W, C), got shape "
                             f"{self.images.shape}.")
        if len(self.images) != len(self.labels):
            raise ValueError(f"Dataset {self.name!r}: {len(self.images)} images but "
                             f"{len(self.labels)} labels.")
        check_labels(self.labels, self.num_classes, self.name)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)


def check_labels(labels: np.ndarray, num_classes: int, where: str = "") -> None:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(f"{where or 'Dataset'}: labels must lie in [0, {num_classes}); found "
                         f"{bad.size} outside it, e.g. {sorted(set(bad.tolist()))[:5]}.")


def steps_per_epoch(dataset: ArrayDataset, batch_size: int) -> int:
    return len(dataset) // batch_size


def train_batches(dataset: ArrayDataset, batch_size: int, *, seed: int, epoch: int
                  ) -> Iterator[dict]:
    """Shuffled full batches for one epoch (the incomplete last batch is dropped)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if len(dataset) < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the {len(dataset)} training "
                         f"examples of {dataset.name!r}.")
    order = np.random.default_rng([seed, epoch]).permutation(len(dataset))
    for i in range(steps_per_epoch(dataset, batch_size)):
        idx = order[i * batch_size:(i + 1) * batch_size]
        yield {"image": dataset.images[idx], "label": dataset.labels[idx]}


def eval_batches(dataset: ArrayDataset, batch_size: int) -> Iterator[dict]:
    """Every example once, in order; the last batch is padded to `batch_size`, mask 0."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    for start in range(0, len(dataset), batch_size):
        images = dataset.images[start:start + batch_size]
        labels = dataset.labels[start:start + batch_size]
        pad = batch_size - len(labels)
        mask = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        yield {"image": images, "label": labels, "mask": mask}
