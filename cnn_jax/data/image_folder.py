"""Images in folders, one sub-folder per class, as torchvision's ImageFolder reads them.

    root/<class_name>/**/<image>        one folder, split here into train/test
    root/train/<class_name>/...  root/test/<class_name>/...  [root/validation/<class_name>/...]

Class names are the sorted class-folder names and label i is the i-th name. Images are the
files with torchvision's extensions (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp, any
case) plus .gif (its first frame), also in nested sub-folders of a class folder; other files
and hidden files or folders (names starting with '.') are skipped, and one line says how
many and why. With one folder, each class is split on its own (stratified): a
`test_fraction` of its files, chosen by `split_seed` from the sorted paths, go to 'test'; the
split does not depend on any run's seed. A `validation/` folder beside `train/` and `test/`
is the dataset's own validation split; without one, `split="validation"` raises
`MissingSplit`.

Before anything else every file (of every split) is decoded fully, in parallel threads, and
all files that fail (corrupt, truncated, not an image) are named in one error. Files that
decoded are recorded by path, size and modification time in the cache directory
(`cnn_jax.data.image_cache`), so a resumed run checks only new or changed files.

Decoding: EXIF orientation applied (`exif_transpose=True`), 16-bit images scaled to 8 bits
(v * 255 / 65535), transparency (RGBA, LA, P or L/RGB with a transparent colour) composited
on `background` (white) unless `channels=4` keeps alpha as a 4th channel, then converted to
RGB (3), grayscale (1) or RGBA (4), scaled (bilinear) to cover `image_size` and centre-cut,
as torchvision's Resize + CenterCrop. `cache='memory'` or `'disk'` keeps the decoded, resized
split (on disk keyed by the files and the settings), so images are decoded once, not every
epoch; `'auto'` (the default) keeps it in memory when it takes at most 2 GiB.
mean/std come from the training split for every split.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageOps

from cnn_jax.data import image_cache
from cnn_jax.data.dataset import ArraySource, Dataset, MissingSplit, channel_stats, check_labels
from cnn_jax.data.image_ops import resize_center_crop

SPLITS = ("train", "test", "validation")
# torchvision.datasets.folder.IMG_EXTENSIONS, plus .gif (first frame).
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
CACHES = ("auto", "memory", "disk", "none")
AUTO_MEMORY_BYTES = 2 << 30  # cache='auto' keeps a split in memory up to this size
STATS_SAMPLE = 256  # training images that mean/std are computed from
MAX_LISTED = 20  # bad files named in one error
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
THREADS = min(16, os.cpu_count() or 1)
_reported: set = set()  # roots whose scan summary this process has printed
_stats_memo: dict = {}


def decode(path: str, channels: int = 3, background=(255, 255, 255),
           exif_transpose: bool = True) -> np.ndarray:
    """The whole file decoded to a uint8 (H, W, channels) array (see the module docstring)."""
    with Image.open(path) as img:
        img.load()  # the full decode: a truncated file fails here, not at verify()
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
        return to_array(img, channels, background)


def to_array(img: Image.Image, channels: int, background=(255, 255, 255)) -> np.ndarray:
    if img.mode in SIXTEEN_BIT:
        values = np.asarray(img).astype(np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"32-bit integer pixels outside 0-65535 (mode {img.mode}) are not "
                             f"supported; save the image with 8 or 16 bits.")
        img = Image.fromarray(np.floor(values * (255 / 65535) + 0.5).astype(np.uint8), "L")
    elif img.mode == "F":
        raise ValueError("32-bit float pixels (mode F) are not supported; save the image "
                         "with 8 or 16 bits.")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"))
        if channels == 4:
            return rgba
        alpha = rgba[..., 3:].astype(np.uint32)
        rgb = (rgba[..., :3] * alpha + np.asarray(background, np.uint32) * (255 - alpha)
               + 127) // 255
        img = Image.fromarray(rgb.astype(np.uint8), "RGB")
    array = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    if channels == 1:
        return array[..., None]
    if channels == 4:
        return np.concatenate([array, np.full(array.shape[:2] + (1,), 255, np.uint8)], -1)
    return array


class ImageFolderSource:
    """Random access to image files: `source[i]` -> {'image': (H, W, C) uint8, 'label': int32}.

    Holds only paths, labels and settings, so it pickles (grain's worker processes)."""

    def __init__(self, paths, labels, image_size: tuple[int, int], channels: int,
                 background=(255, 255, 255), exif_transpose: bool = True):
        self.paths = tuple(str(p) for p in paths)
        self.labels = np.asarray(labels, np.int32)
        self.image_size = tuple(image_size)
        self.channels = channels
        self.background = tuple(background)
        self.exif_transpose = exif_transpose

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> np.ndarray:
        image = decode(self.paths[i], self.channels, self.background, self.exif_transpose)
        return resize_center_crop(image, self.image_size)

    def __getitem__(self, i: int) -> dict:
        try:
            image = self.read(i)
        except Exception as e:
            raise ValueError(f"Cannot decode image file {self.paths[i]}: {e}") from e
        return {"image": image, "label": self.labels[i]}


class CachedImageFolderSource(ArraySource):
    """The decoded, resized images of a split held as one array (in memory or a memory-mapped
    `.npy`); an `ArraySource`, so the pipeline gathers whole batches with one indexing."""

    def __init__(self, images: np.ndarray, labels, paths):
        super().__init__(images, labels)
        self.paths = tuple(paths)


def load_image_folder(split: str, root: str, image_size: int | tuple[int, int] = 64,
                      channels: int = 3, test_fraction: float = 0.2, split_seed: int = 0,
                      verify: bool = True, exif_transpose: bool = True,
                      background: str | tuple = "white", cache: str = "auto",
                      cache_dir: str = "") -> Dataset:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for 'image_folder'. "
                         f"Valid choices: {', '.join(SPLITS)}.")
    size = _check_image_size(image_size)
    if channels not in (1, 3, 4):
        raise ValueError(f"channels must be 1 (grayscale), 3 (RGB) or 4 (RGBA), "
                         f"got {channels!r}.")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}.")
    if cache not in CACHES:
        raise ValueError(f"Unknown cache {cache!r} for 'image_folder'. "
                         f"Valid choices: {', '.join(CACHES)}.")
    background = _check_background(background)
    if not root:
        raise ValueError("image_folder needs a root folder: set config.dataset.root "
                         "(--config.dataset.root=path/to/images).")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist (or is not a folder).")

    splits, skipped = _find_splits(root, test_fraction, split_seed)
    class_names = splits.pop("class_names")
    if root not in _reported:
        _reported.add(root)
        _summary(root, class_names, splits, skipped)
    if split not in splits:
        raise MissingSplit(f"Image folder {root} has no {split!r} split: it has "
                           f"{', '.join(splits)} (a {split}/ folder beside train/ and test/ "
                           f"would be one).")
    files = splits[split]
    if not files:
        raise ValueError(f"The {split!r} split of {root} is empty: every class has a single "
                         f"image, and a class needs 2 or more to give one to 'test'.")
    check_labels(np.array([label for _, label in files]), len(class_names), str(root))

    settings = dict(image_size=list(size), channels=channels, background=list(background),
                    exif_transpose=exif_transpose)
    paths, labels = zip(*files)
    lazy = ImageFolderSource(paths, labels, size, channels, background, exif_transpose)
    bytes_needed = len(files) * size[0] * size[1] * channels
    if cache == "auto":
        cache = "memory" if bytes_needed <= AUTO_MEMORY_BYTES else "none"
        if cache == "none":
            _say(f"image_folder: the decoded {split} split would take "
                 f"{bytes_needed / 2**30:.1f} GiB, more than cache='auto' keeps in memory: "
                 f"files are decoded as they are read (cache='disk' would keep them on disk).")
    source, checked, bad = lazy, set(), []
    if cache != "none":
        source, checked, bad = _cached(lazy, root, split, settings, cache, cache_dir)
    if verify:
        every = [path for name in splits for path, _ in splits[name]]
        bad += _verify([p for p in every if p not in checked], root, cache_dir)
    if bad:
        _raise_bad(bad, root)
    train = splits["train"]
    mean, std = _stats(source if split == "train" else
                       ImageFolderSource(*zip(*train), size, channels, background, exif_transpose),
                       (settings, [image_cache.file_key(p) for p, _ in train]))
    return Dataset(source, class_names, (*size, channels), "image_folder", mean, std)


def _check_image_size(image_size) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                 for s in size):
        raise ValueError(f"image_size must be a positive int or a (height, width) pair of "
                         f"them, got {image_size!r}.")
    return size


def _check_background(background) -> tuple[int, int, int]:
    try:
        if isinstance(background, str):
            return tuple(ImageColor.getrgb(background)[:3])
        rgb = tuple(int(c) for c in background)
        if len(rgb) == 3 and all(0 <= c <= 255 and c == c0 for c, c0 in zip(rgb, background)):
            return rgb
    except (TypeError, ValueError):
        pass
    raise ValueError(f"background must be a colour name or code ('white', 'black', '#808080') "
                     f"or an (r, g, b) triple of ints in 0-255, got {background!r}.")


def _find_splits(root: Path, test_fraction: float, split_seed: int):
    """{'class_names': ..., split: [(path, label), ...]} and the skipped files' reasons."""
    skipped = Counter()  # reason -> files
    if (root / "train").is_dir() and (root / "test").is_dir():
        names = [s for s in SPLITS if (root / s).is_dir()]
        scans = {s: _scan(root / s, skipped) for s in names}
        class_names = scans["train"][0]
        for s in names[1:]:
            if scans[s][0] != class_names:
                only_train = sorted(set(class_names) - set(scans[s][0]))
                only_other = sorted(set(scans[s][0]) - set(class_names))
                raise ValueError(f"The class folders of {root / 'train'} and {root / s} differ: "
                                 f"only in train: {only_train or 'none'}; "
                                 f"only in {s}: {only_other or 'none'}.")
        splits = {s: scans[s][1] for s in names}
    else:
        class_names, files = _scan(root, skipped)
        splits = dict(zip(("train", "test"), _split(files, class_names, test_fraction, split_seed)))
    return {"class_names": class_names, **splits}, skipped


def _scan(folder: Path, skipped: Counter) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """The class names under `folder` and their images (nested folders too) as (path, label),
    in sorted order; counts the skipped files by reason into `skipped`."""
    class_dirs = []
    for entry in sorted(folder.iterdir(), key=lambda d: d.name):
        if entry.name.startswith("."):
            skipped["hidden"] += 1
        elif entry.is_dir():
            class_dirs.append(entry)
        else:
            skipped["outside class folders"] += 1
    if not class_dirs:
        raise ValueError(f"No class folders in {folder}: expected one sub-folder per class, "
                         f"{folder}/<class_name>/<image files>.")
    files, empty = [], []
    for label, class_dir in enumerate(class_dirs):
        images = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            skipped["hidden"] += sum(d.startswith(".") for d in dirnames)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    skipped["hidden"] += 1
                elif Path(name).suffix.lower() not in EXTENSIONS:
                    skipped[f"not images ({Path(name).suffix.lower() or 'no extension'})"] += 1
                else:
                    images.append(os.path.join(dirpath, name))
        files += [(p, label) for p in sorted(images)]
        if not images:
            empty.append(str(class_dir))
    kinds = " ".join(EXTENSIONS)
    if not files:
        raise ValueError(f"No images ({kinds}) in any class folder of {folder}.")
    if empty:
        raise ValueError(f"Class folder(s) with no images ({kinds}): {', '.join(empty)}.")
    return tuple(d.name for d in class_dirs), files


def _split(files, class_names, test_fraction: float, split_seed: int):
    """Stratified: per class, round(test_fraction * n) files (at least 1 when n >= 2, and
    never all of them) go to test, chosen by a generator seeded from (split_seed, label)."""
    train, test, alone = [], [], []
    for label in sorted({label for _, label in files}):
        paths = [f for f in files if f[1] == label]
        n = len(paths)
        n_test = min(n - 1, max(1, math.floor(test_fraction * n + 0.5))) if n >= 2 else 0
        if n == 1:
            alone.append(class_names[label])
        chosen = set(np.random.default_rng([split_seed, label]).permutation(n)[:n_test].tolist())
        test += [f for i, f in enumerate(paths) if i in chosen]
        train += [f for i, f in enumerate(paths) if i not in chosen]
    if alone:
        warnings.warn(f"image_folder: class(es) {', '.join(map(repr, alone))} have a single "
                      f"image: it goes to train, and 'test' has no image of them.", stacklevel=4)
    return train, test


def _summary(root: Path, class_names, splits: dict, skipped: Counter) -> None:
    sizes = ", ".join(f"{name} {len(files):,}" for name, files in splits.items())
    skipped = {reason: n for reason, n in sorted(skipped.items()) if n}
    why = "; ".join(f"{n:,} {reason}" for reason, n in skipped.items())
    _say(f"image_folder: {root}: {len(class_names)} classes, {sizes} images; "
         + (f"skipped {sum(skipped.values()):,} files: {why}." if skipped else "nothing skipped."))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _decode_all(fn, items, what: str) -> tuple[list, dict]:
    """fn(item) for every item in THREADS threads (PIL decodes without the GIL); returns the
    results in order and {index: exception}; a progress line every 5 s and one at the end."""
    results, errors = [None] * len(items), {}
    if not items:
        return results, errors
    start = last = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            try:
                results[i] = future.result()
            except Exception as e:  # noqa: BLE001 - every failure is reported, by file
                errors[i] = e
            now = time.monotonic()
            if now - last >= 5 or done == len(items):
                last = now
                _say(f"image_folder: {what}: {done:,}/{len(items):,} files, {now - start:.1f} s")
    return results, errors


def _raise_bad(bad: list[str], root: Path) -> None:
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    raise ValueError(f"{len(bad)} unreadable image file(s) under {root} (fix or remove them; "
                     f"nothing was trained):\n  " + "\n  ".join(sorted(bad)[:MAX_LISTED]) + more)


def _verify(paths, root: Path, cache_dir: str) -> list[str]:
    """Decodes every file not yet recorded as good; records the good ones and returns the
    bad ones as 'path (why)'."""
    record = image_cache.VerifiedFiles(root, cache_dir)
    keys = [image_cache.file_key(p) for p in paths]
    todo = [k for k in keys if not record.is_good(k)]
    _, errors = _decode_all(lambda key: decode(key[0]), todo, "checking that every file decodes")
    record.add(k for i, k in enumerate(todo) if i not in errors)
    return [f"{todo[i][0]} ({e})" for i, e in errors.items()]


def _cached(lazy: ImageFolderSource, root: Path, split: str, settings: dict, cache: str,
            cache_dir: str):
    """The split decoded and resized into one array (read back from disk when the same files
    and settings were cached before). Returns the source, the paths it decoded and the files
    that failed as 'path (why)' (then the source is `lazy`)."""
    keys = [image_cache.file_key(p) for p in lazy.paths]
    path = image_cache.array_cache_path(root, split, keys, settings, cache_dir)
    if cache == "disk":
        images = image_cache.load_array(path)
        if images is not None and len(images) == len(lazy):
            _say(f"image_folder: read the decoded {split} split from {path}")
            return CachedImageFolderSource(images, lazy.labels, lazy.paths), set(lazy.paths), []
    images = np.empty((len(lazy), *lazy.image_size, lazy.channels), np.uint8)

    def read(i):
        images[i] = lazy.read(i)
    _, errors = _decode_all(read, range(len(lazy)), f"decoding the {split} split")
    if errors:
        return lazy, set(lazy.paths), [f"{lazy.paths[i]} ({e})" for i, e in errors.items()]
    image_cache.VerifiedFiles(root, cache_dir).add(keys)
    if cache == "disk" and not image_cache.save_array(path, images):
        _say(f"image_folder: could not write the decoded {split} split to {path}; "
             f"the next run decodes it again.")
    return CachedImageFolderSource(images, lazy.labels, lazy.paths), set(lazy.paths), []


def _stats(train, key) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std over up to STATS_SAMPLE evenly spaced training images, pooled
    from per-image stats (all images have the same size) to keep memory small; memoised per
    (files, settings) so the other splits' loads do not decode them again."""
    key = repr(key)
    if key not in _stats_memo:
        idx = np.linspace(0, len(train) - 1, min(len(train), STATS_SAMPLE)).round().astype(int)
        stats = [channel_stats(np.asarray(train[i]["image"])[None]) for i in idx]
        means = np.array([m for m, _ in stats])
        squares = np.array([s for _, s in stats]) ** 2 + means ** 2  # E[x^2] of each image
        mean = means.mean(axis=0)
        std = np.sqrt(np.maximum(squares.mean(axis=0) - mean ** 2, 0.0))
        _stats_memo[key] = tuple(mean.tolist()), tuple(std.tolist())
    return _stats_memo[key]
