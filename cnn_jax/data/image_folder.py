"""Images in folders, one sub-folder per class, as torchvision's ImageFolder reads them.

    root/<class_name>/*.png|jpg|jpeg         one folder, split here into train/test
    root/train/<class_name>/...  root/test/<class_name>/...   the splits given on disk

Class names are the sorted sub-folder names and label i is the i-th name. Other files and
hidden files or folders (names starting with '.') are ignored. With one folder, each class
is split on its own (stratified): a `test_fraction` of its files, chosen by `split_seed`
from the sorted paths, go to 'test'; the split does not depend on any run's seed.

Files are read lazily: `ImageFolderSource[i]` decodes one file, converts it to RGB (or L)
and scales it (bilinear) so that it covers `image_size`, then cuts the centre, as
torchvision's Resize + CenterCrop do. mean/std come from the training split for both splits.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from cnn_jax.data.dataset import Dataset, MissingSplit, channel_stats, check_labels
from cnn_jax.data.image_ops import resize_center_crop

SPLITS = ("train", "test")
EXTENSIONS = (".png", ".jpg", ".jpeg")
STATS_SAMPLE = 256  # training images that mean/std are computed from
MAX_LISTED = 10  # unreadable files named in one error


class ImageFolderSource:
    """Random access to image files: `source[i]` -> {'image': (H, W, C) uint8, 'label': int32}.

    Holds only paths, labels and settings, so it pickles (grain's worker processes)."""

    def __init__(self, paths, labels, image_size: tuple[int, int], channels: int):
        self.paths = tuple(str(p) for p in paths)
        self.labels = np.asarray(labels, np.int32)
        self.image_size = tuple(image_size)
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                image = np.asarray(img.convert("RGB" if self.channels == 3 else "L"))
        except Exception as e:
            raise ValueError(f"Cannot decode image file {path}: {e}") from e
        if self.channels == 1:
            image = image[..., None]
        return {"image": resize_center_crop(image, self.image_size), "label": self.labels[i]}


def load_image_folder(split: str, root: str, image_size: int | tuple[int, int] = 64,
                      channels: int = 3, test_fraction: float = 0.2, split_seed: int = 0,
                      verify: bool = True) -> Dataset:
    if split == "validation":
        raise MissingSplit(f"{root} has no validation split of its own.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for 'image_folder'. "
                         f"Valid choices: {', '.join(SPLITS)}.")
    size = _check_image_size(image_size)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}.")
    if not root:
        raise ValueError("image_folder needs a root folder: set config.dataset.root "
                         "(--config.dataset.root=path/to/images).")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist (or is not a folder).")

    if (root / "train").is_dir() and (root / "test").is_dir():
        (class_names, train), (test_names, test) = _scan(root / "train"), _scan(root / "test")
        if class_names != test_names:
            only_train = sorted(set(class_names) - set(test_names))
            only_test = sorted(set(test_names) - set(class_names))
            raise ValueError(f"The class folders of {root / 'train'} and {root / 'test'} differ: "
                             f"only in train: {only_train or 'none'}; "
                             f"only in test: {only_test or 'none'}.")
    else:
        class_names, files = _scan(root)
        train, test = _split(files, test_fraction, split_seed)
    if verify:
        _verify([path for path, _ in train + test], root)
    files = train if split == "train" else test
    if not files:
        raise ValueError(f"The {split!r} split of {root} is empty: every class has a single "
                         f"image, and a class needs 2 or more to give one to 'test'.")

    def source(files):
        paths, labels = zip(*files)
        return ImageFolderSource(paths, labels, size, channels)

    check_labels(np.array([label for _, label in files]), len(class_names), str(root))
    mean, std = _stats(source(train))  # from train for both splits, so both normalise alike
    return Dataset(source(files), class_names, (*size, channels), "image_folder", mean, std)


def _check_image_size(image_size) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                 for s in size):
        raise ValueError(f"image_size must be a positive int or a (height, width) pair of "
                         f"them, got {image_size!r}.")
    return size


def _scan(folder: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """The class names under `folder` and its images as (path, label), in sorted order."""
    class_dirs = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: d.name)
    if not class_dirs:
        raise ValueError(f"No class folders in {folder}: expected one sub-folder per class, "
                         f"{folder}/<class_name>/<image files>.")
    files, empty = [], []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(p for p in class_dir.iterdir() if p.is_file()
                        and not p.name.startswith(".") and p.suffix.lower() in EXTENSIONS)
        files += [(p, label) for p in images]
        if not images:
            empty.append(str(class_dir))
    kinds = ", ".join(EXTENSIONS)
    if not files:
        raise ValueError(f"No images ({kinds}) in any class folder of {folder}.")
    if empty:
        raise ValueError(f"Class folder(s) with no images ({kinds}): {', '.join(empty)}.")
    return tuple(d.name for d in class_dirs), files


def _split(files, test_fraction: float, split_seed: int):
    """Stratified: per class, round(test_fraction * n) files (at least 1 when n >= 2, and
    never all of them) go to test, chosen by a generator seeded from (split_seed, label)."""
    train, test = [], []
    for label in sorted({label for _, label in files}):
        paths = [f for f in files if f[1] == label]
        n = len(paths)
        n_test = min(n - 1, max(1, math.floor(test_fraction * n + 0.5))) if n >= 2 else 0
        chosen = set(np.random.default_rng([split_seed, label]).permutation(n)[:n_test].tolist())
        test += [f for i, f in enumerate(paths) if i in chosen]
        train += [f for i, f in enumerate(paths) if i not in chosen]
    return train, test


def _verify(paths, root: Path) -> None:
    """Open every file once; report all that PIL cannot read."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as e:
            bad.append(f"{path} ({e})")
    if bad:
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise ValueError(f"{len(bad)} unreadable image file(s) under {root}:\n  "
                         + "\n  ".join(bad[:MAX_LISTED]) + more)


def _stats(train: ImageFolderSource) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std over up to STATS_SAMPLE evenly spaced training images, pooled
    from per-image stats (all images have the same size) to keep memory small."""
    idx = np.linspace(0, len(train) - 1, min(len(train), STATS_SAMPLE)).round().astype(int)
    stats = [channel_stats(train[i]["image"][None]) for i in idx]
    means = np.array([m for m, _ in stats])
    squares = np.array([s for _, s in stats]) ** 2 + means ** 2  # E[x^2] of each image
    mean = means.mean(axis=0)
    std = np.sqrt(np.maximum(squares.mean(axis=0) - mean ** 2, 0.0))
    return tuple(mean.tolist()), tuple(std.tolist())
