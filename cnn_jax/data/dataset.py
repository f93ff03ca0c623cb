"""The dataset interface every loader returns.

A `Dataset` is one split: a random-access `source` (`len(source)`, `source[i]` gives
{'image': (H, W, C) uint8 or float32 array, 'label': int}), the class names, the image shape
every example has, and the per-channel mean/std that `normalize` uses. Sources are what
grain reads (`cnn_jax.data.pipeline`): arrays in memory, a TFDS `data_source`, or image files.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np


class MissingSplit(ValueError):
    """The dataset has no such split (e.g. no own "validation" split): raised by a loader
    asked for it, so the caller can fall back (a validation split carved from "train")."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    source: Any
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    name: str = ""
    mean: tuple[float, ...] = ()  # per channel, images on the [0, 1] scale
    std: tuple[float, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.source)


class ArraySource:
    """Examples held in memory as arrays: images (N, H, W, C), labels (N,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images = images
        self.labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


def check_labels(labels: np.ndarray, num_classes: int, where: str = "") -> None:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(f"{where or 'Dataset'}: labels must lie in [0, {num_classes}); found "
                         f"{bad.size} outside it, e.g. {sorted(set(bad.tolist()))[:5]}.")


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, H, W, C) images, on the [0, 1] scale."""
    x = images.astype(np.float64)
    if images.dtype == np.uint8:
        x /= 255.0
    return tuple(x.mean(axis=(0, 1, 2)).tolist()), tuple(x.std(axis=(0, 1, 2)).tolist())


def from_arrays(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                name: str = "", mean: Sequence[float] = (), std: Sequence[float] = ()) -> Dataset:
    """An in-memory dataset; labels are checked, and mean/std computed if not given."""
    check_labels(labels, len(class_names), name)
    source = ArraySource(images, labels)
    if not mean or not std:
        mean, std = channel_stats(images)
    return Dataset(source, tuple(class_names), tuple(images.shape[1:]), name, tuple(mean),
                   tuple(std))
