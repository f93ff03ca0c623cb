"""Some classes of a dataset, relabeled 0..k-1, with optionally a few training examples per
class: the data of transfer and few-label experiments.

    get_dataset("subset", "train", base="mnist", classes="5-9", train_per_class=100)

`classes`: '5-9', '0,2,4' or '' (all), in the order that gives the new labels (class 5 becomes
label 0 above). `train_per_class`: that many training examples of each class, drawn with
`subset_seed` (stratified, independent of the run's seed); 0 keeps all. The test split always
keeps every example of the chosen classes; there is no own "validation" split (MissingSplit).
Normalization statistics are the base dataset's, so
a model pretrained on other classes of the same base sees its inputs scaled the same way.
`data_dir`, `image_size`: passed to the base loader when set (and when it takes them).
The base split's arrays are kept for the next call (the two most recent), so the runs of one
experiment decode the base dataset once.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from cnn_jax.data.dataset import ArraySource, Dataset, MissingSplit
from cnn_jax.data.pipeline import load_into_memory


def parse_classes(classes, num_classes: int) -> list[int]:
    """'5-9', '0,2,4', a sequence of ints, or '' (every class)."""
    if classes in ("", None, ()):
        return list(range(num_classes))
    if isinstance(classes, str):
        out = []
        for part in filter(None, (p.strip() for p in classes.split(","))):
            lo, sep, hi = part.partition("-")
            try:
                out += list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
            except ValueError:
                raise ValueError(f"classes {classes!r}: {part!r} is not a class index or a range "
                                 "like '5-9'.") from None
    else:
        out = [int(c) for c in classes]
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad or len(set(out)) != len(out) or not out:
        raise ValueError(f"classes {classes!r} must be distinct class indices in [0, "
                         f"{num_classes}); got {out}.")
    return out


@functools.lru_cache(maxsize=2)
def _base_split(base: str, split: str, options: tuple) -> Dataset:
    """The base dataset's split, in memory."""
    from cnn_jax.data import get_dataset

    dataset = get_dataset(base, split, **dict(options))
    if not isinstance(dataset.source, ArraySource):
        dataset = load_into_memory(dataset)
    return dataset


def load_subset(split: str, base: str = "digits", classes: str = "", train_per_class: int = 0,
                subset_seed: int = 0, data_dir: str = "", image_size: int = 0) -> Dataset:
    from cnn_jax.data import dataset_options

    if split == "validation":  # the training loop carves one from train
        raise MissingSplit("'subset' has no validation split of its own.")
    if base == "subset":
        raise ValueError("dataset 'subset' needs another dataset as its base.")
    valid = dataset_options(base)
    options = {}
    for key, value in (("data_dir", data_dir), ("image_size", image_size)):
        if value:
            if key not in valid:
                raise ValueError(f"Dataset {base!r} takes no {key!r} (its options: "
                                 f"{', '.join(valid) or 'none'}).")
            options[key] = value
    dataset = _base_split(base, split, tuple(sorted(options.items())))
    images, labels = dataset.source.images, dataset.source.labels
    chosen = parse_classes(classes, dataset.num_classes)
    if not isinstance(train_per_class, int) or train_per_class < 0:
        raise ValueError(f"train_per_class must be an int >= 0, got {train_per_class!r}.")
    rng = np.random.default_rng(subset_seed)
    keep = []
    for c in chosen:
        index = np.flatnonzero(labels == c)
        if split == "train" and train_per_class:
            if len(index) < train_per_class:
                raise ValueError(f"{base!r} has {len(index)} training examples of class {c}, "
                                 f"fewer than train_per_class={train_per_class}.")
            index = rng.choice(index, train_per_class, replace=False)
        keep.append(index)
    keep = np.sort(np.concatenate(keep))
    if not len(keep):
        raise ValueError(f"The {split} split of {base!r} has no examples of classes {chosen}.")
    relabel = np.full(dataset.num_classes, -1, np.int32)
    relabel[chosen] = np.arange(len(chosen), dtype=np.int32)
    source = ArraySource(images[keep], relabel[labels[keep]])
    name = f"{base}[{','.join(map(str, chosen))}]"
    return dataclasses.replace(dataset, source=source, name=name,
                               class_names=tuple(dataset.class_names[c] for c in chosen))
