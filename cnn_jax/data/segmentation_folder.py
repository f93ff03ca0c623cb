"""Images with per-pixel masks in folders (semantic segmentation).

    root/images/<stem>.png|jpg|jpeg + root/masks/<stem>.png     one set, split here
    root/train/images, root/train/masks, root/test/images, root/test/masks   splits on disk
    root/classes.txt (optional)   one class name a line; line i names class i

A mask is a PNG of the image's size: a palette PNG (its indices are the classes, as in
PASCAL VOC) or a grayscale one (its values are the classes); `binary=True` reads a grayscale
mask as two classes, values < 128 -> 0 and >= 128 -> 1 (black/white masks such as
membrane's). `ignore_value` (255) marks unlabelled pixels. Without classes.txt there are
`num_classes` classes, or max(mask values other than the ignore value) + 1.

Every pair is read and checked once, at load: an image without a mask (or a mask without an
image), a mask of another size than its image, a mask value that is neither a class nor the
ignore value: each a clear error naming the file. The set is held in memory; `image_size`
resizes every image (bilinear) and mask (nearest) to that size, needed where sizes differ.
With one folder, a `test_fraction` of the sorted stems chosen by `split_seed` goes to 'test'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cnn_jax.data.dataset import ArraySource, Dataset, MissingSplit, channel_stats

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def load_segmentation_folder(split: str, root: str, image_size: int | tuple[int, int] | None = None,
                             channels: int = 3, binary: bool = False, num_classes: int = 0,
                             ignore_value: int = 255, test_fraction: float = 0.2,
                             split_seed: int = 0) -> Dataset:
    if split == "validation":
        raise MissingSplit("'segmentation_folder' has no validation split of its own.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for 'segmentation_folder'. "
                         f"Valid choices: {', '.join(SPLITS)}.")
    if not root:
        raise ValueError("segmentation_folder needs a root folder: set config.dataset.root.")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Segmentation folder {root} does not exist (or is not a folder).")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = pairs(root / "train" / "images", root / "train" / "masks")
        test = pairs(root / "test" / "images", root / "test" / "masks")
    else:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}.")
        files = pairs(root / "images", root / "masks")
        order = np.random.default_rng(split_seed).permutation(len(files))
        n_test = min(len(files) - 1, max(1, round(test_fraction * len(files))))
        test = [files[i] for i in sorted(order[:n_test])]
        train = [files[i] for i in sorted(order[n_test:])]
    class_names = _class_names(root, num_classes)
    return load_pairs(train, test, split, class_names=class_names, image_size=image_size,
                      channels=channels, binary=binary, ignore_value=ignore_value,
                      name="segmentation_folder")


def pairs(image_dir: Path, mask_dir: Path, mask_extension: str = ".png") -> list[tuple[Path, Path]]:
    """(image, mask) paths with the same stem, sorted; an unpaired file is an error."""
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"No folder {folder}: a segmentation set needs "
                                    f"{image_dir.name}/ and {mask_dir.name}/ side by side.")
    images = {p.stem: p for p in image_dir.iterdir()
              if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")}
    masks = {p.stem: p for p in mask_dir.iterdir()
             if p.suffix.lower() == mask_extension and not p.name.startswith(".")}
    only_images, only_masks = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if only_images:
        raise ValueError(f"{len(only_images)} image(s) in {image_dir} without a mask in "
                         f"{mask_dir}: {', '.join(images[s].name for s in only_images[:5])} "
                         f"(an image's mask is <same stem>{mask_extension}).")
    if only_masks:
        raise ValueError(f"{len(only_masks)} mask(s) in {mask_dir} without an image in "
                         f"{image_dir}: {', '.join(masks[s].name for s in only_masks[:5])}.")
    if not images:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}.")
    return [(images[s], masks[s]) for s in sorted(images, key=_natural)]


def _natural(stem: str):
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _class_names(root: Path, num_classes: int) -> tuple[str, ...] | int:
    path = root / "classes.txt"
    if path.exists():
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        if not names:
            raise ValueError(f"{path} names no classes: write one class name a line.")
        return names
    return num_classes


def read_mask(path: Path, binary: bool = False) -> np.ndarray:
    """A mask PNG as (H, W) int32 class indices (palette indices or gray values)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "1", "I", "I;16"):
                raise ValueError(f"mode {img.mode}: a mask must be a palette or grayscale PNG")
            mask = np.asarray(img).astype(np.int32)
    except Exception as e:
        raise ValueError(f"Cannot read mask file {path}: {e}") from e
    return (mask >= 128).astype(np.int32) if binary else mask


def read_image(path: Path, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            image = np.asarray(img.convert("RGB" if channels == 3 else "L"))
    except Exception as e:
        raise ValueError(f"Cannot read image file {path}: {e}") from e
    return image[..., None] if channels == 1 else image


def _resize(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]):
    h, w = size
    squeeze = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image).resize((w, h), Image.BILINEAR)
    image = np.asarray(pil)[..., None] if squeeze else np.asarray(pil)
    rows = np.floor((np.arange(h) + 0.5) * mask.shape[0] / h).astype(int)
    cols = np.floor((np.arange(w) + 0.5) * mask.shape[1] / w).astype(int)
    return image, mask[rows][:, cols]


def load_pairs(train, test, split: str, *, class_names, image_size=None, channels: int = 3,
               binary: bool = False, ignore_value: int = 255, name: str = "") -> Dataset:
    """Reads and checks the (image, mask) pairs of both splits; returns `split` in memory, with
    mean/std from the training images."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    size = None if image_size is None else (
        (image_size, image_size) if isinstance(image_size, int) else tuple(image_size))
    read = {}
    for s, files in (("train", train), ("test", test)):
        images, masks = [], []
        for image_path, mask_path in files:
            image, mask = read_image(image_path, channels), read_mask(mask_path, binary)
            if mask.shape != image.shape[:2]:
                raise ValueError(f"Mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} but its image "
                                 f"{image_path} is {image.shape[0]}x{image.shape[1]}; they must be "
                                 "the same size.")
            if size is not None:
                image, mask = _resize(image, mask, size)
            images.append(image)
            masks.append((mask, mask_path))
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise ValueError(f"The images of {name!r} ({s}) have different sizes {sorted(shapes)[:3]}; "
                             "set config.dataset.image_size to bring them to one.")
        read[s] = (images, masks)
    if isinstance(class_names, int):
        values = {int(v) for _, masks in read.values() for m, _ in masks for v in np.unique(m)}
        largest = max((v for v in values if v != ignore_value), default=0)
        class_names = tuple(str(i) for i in range(max(class_names, largest + 1)))
    for images, masks in read.values():
        for mask, path in masks:
            bad = np.unique(mask[(mask != ignore_value) & ((mask < 0) | (mask >= len(class_names)))])
            if bad.size:
                raise ValueError(f"Mask {path} holds values {bad[:5].tolist()} that are neither "
                                 f"classes (0..{len(class_names) - 1}: {', '.join(class_names)}) "
                                 f"nor the ignore value {ignore_value}.")
    images = np.stack(read[split][0])
    mean, std = channel_stats(np.stack(read["train"][0]))
    masks = np.stack([m for m, _ in read[split][1]]).astype(np.int32)
    return Dataset(ArraySource(images, masks), tuple(class_names), tuple(images.shape[1:]),
                   name, mean, std)
