"""The ISBI 2012 EM membrane images (30 grayscale 512x512 slices of one volume with binary
membrane masks; see ../shared/data/SOURCES.md): `root/image/N.png`, `root/label/N.png`.

The challenge's test labels are not public, so slices 24-29 (the last six of the volume, a
contiguous block, so no test slice has a training neighbour on both sides) are held out as
'test'; 0-23 are 'train'. Classes: 0 membrane (black in the masks), 1 cell (white).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cnn_jax.data.dataset import Dataset, MissingSplit
from cnn_jax.data.segmentation_folder import load_pairs, pairs

DEFAULT_ROOT = "../shared/data/membrane"  # relative to the repository root
TEST_SLICES = tuple(range(24, 30))
CLASS_NAMES = ("membrane", "cell")


class Repeated:
    """A source whose examples come `repeats` times (example i is source[i % len(source)]):
    longer epochs of a tiny set, each copy cropped and flipped differently by the transforms."""

    def __init__(self, source, repeats: int):
        self.source, self.repeats = source, repeats

    def __len__(self) -> int:
        return len(self.source) * self.repeats

    def __getitem__(self, i: int) -> dict:
        return self.source[int(i) % len(self.source)]


def load_membrane(split: str, root: str = DEFAULT_ROOT, image_size: int | None = None,
                  train_repeats: int = 1) -> Dataset:
    """`train_repeats`: each training slice that many times an epoch (the test split once).
    With repeats, carve no validation split from 'train' (config.validation_fraction=0): its
    slices would also be training slices."""
    if split == "validation":
        raise MissingSplit("'membrane' has no validation split of its own.")
    if split not in ("train", "test"):
        raise ValueError(f"Unknown split {split!r} for 'membrane'. Valid choices: train, test.")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"No membrane data at {root}: set config.dataset.root to the "
                                "folder holding image/ and label/ (../shared/data/membrane from "
                                "the repository root).")
    files = pairs(root / "image", root / "label")
    test = [f for f in files if int(f[0].stem) in TEST_SLICES]
    train = [f for f in files if int(f[0].stem) not in TEST_SLICES]
    if not isinstance(train_repeats, int) or train_repeats < 1:
        raise ValueError(f"membrane: train_repeats must be a positive int, got {train_repeats!r}.")
    dataset = load_pairs(train, test, split, class_names=CLASS_NAMES, image_size=image_size,
                         channels=1, binary=True, name="membrane")
    if split == "train" and train_repeats > 1:
        dataset = dataclasses.replace(dataset, source=Repeated(dataset.source, train_repeats))
    return dataset
