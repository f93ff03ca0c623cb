"""The validation split a run selects its model on (README "Model selection").

`validation_split(name, options, train, fraction, seed)` gives the dataset's own validation
split where its loader has one (`get_dataset(name, "validation")`), else, where the loader
raises `MissingSplit`, a stratified `fraction` of the training split carved out with its own
`seed` (`config.validation_seed`), independent of the run's seed: runs with different seeds
are compared on the same held-out images. `fraction=0` and no own split: no validation.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnn_jax.data.dataset import ArraySource, Dataset, MissingSplit


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices, sorted: of each class's n examples, round(fraction * n)
    go to validation (at most n - 1: a class keeps a training example), drawn by a generator
    seeded with (seed, class)."""
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        index = np.flatnonzero(labels == c)
        k = min(int(fraction * len(index) + 0.5), len(index) - 1)
        chosen.append(index[np.random.default_rng([seed, int(c)]).permutation(len(index))[:k]])
    val = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), val), val


class IndexedSource:
    """The examples `indices` of another random-access source."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.source[int(self.indices[i])]

    def __getitems__(self, ids) -> list[dict]:
        keys = [int(self.indices[i]) for i in ids]
        if hasattr(self.source, "__getitems__"):
            return self.source.__getitems__(keys)
        return [self.source[k] for k in keys]


def source_labels(source) -> np.ndarray:
    """Every label of a source: its `labels` (an array, or a method reading labels only), else
    read example by example."""
    labels = getattr(source, "labels", None)
    if callable(labels):
        labels = labels()
    if labels is None:
        labels = [source[i]["label"] for i in range(len(source))]
    return np.asarray(labels, np.int64)


def take(dataset: Dataset, indices: np.ndarray) -> Dataset:
    """The examples `indices` of `dataset` (its class names and mean/std kept)."""
    source = dataset.source
    if isinstance(source, ArraySource):  # stays in memory: the pipeline's fast path
        source = ArraySource(source.images[indices], source.labels[indices])
    else:
        source = IndexedSource(source, indices)
    return dataclasses.replace(dataset, source=source)


def validation_split(name: str, options: dict, train: Dataset, fraction: float, seed: int
                     ) -> tuple[Dataset, Dataset | None, str]:
    """(train, validation or None, a phrase saying where validation comes from)."""
    from cnn_jax.data import get_dataset

    try:
        return train, get_dataset(name, "validation", **options), "the dataset's own split"
    except MissingSplit:
        pass
    if not fraction:
        return train, None, "none"
    train_idx, val_idx = stratified_split(source_labels(train.source), fraction, seed)
    if not len(val_idx):
        raise ValueError(f"config.validation_fraction={fraction} of the {len(train)} training "
                         f"examples of {name!r} leaves no validation example: raise it, or set "
                         "0 to select nothing on held-out data.")
    return (take(train, train_idx), take(train, val_idx),
            f"{fraction:.0%} of train, stratified, validation_seed={seed}")
