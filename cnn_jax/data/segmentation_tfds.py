"""TFDS datasets with segmentation masks, read through `tfds.data_source` (prepare them once
in the array_record format: `python -m cnn_jax.data.prepare`-style, or `tfds build
oxford_iiit_pet --file_format=array_record`).

`oxford_iiit_pet_seg`: the Oxford-IIIT Pet images (3,680 train / 3,669 test) with their
trimaps as masks: trimap 1 (pet) -> class 1 'pet', 2 (background) -> class 0 'background',
3 (the uncertain border) -> the ignore value 255 (as do values outside 1-3, which the real
data does not hold). Each image is scaled (bilinear) to cover `image_size` and its centre cut,
its mask likewise by nearest neighbour, decoded on demand.
"""

from __future__ import annotations

import os

import numpy as np

from cnn_jax.data.dataset import Dataset, MissingSplit
from cnn_jax.data.image_ops import resize_center_crop
from cnn_jax.data.tfds_datasets import IMAGENET_STATS

SPLITS = ("train", "test")
PET_CLASSES = ("background", "pet")
TRIMAP_TO_CLASS = np.full(256, 255, np.int32)
TRIMAP_TO_CLASS[[1, 2]] = [1, 0]


def mask_center_crop(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`resize_center_crop`'s geometry for a (H, W) mask, by nearest neighbour."""
    height, width = size
    h, w = mask.shape
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    rows = np.floor((np.arange(top, top + height) + 0.5) * h / new_h).astype(int)
    cols = np.floor((np.arange(left, left + width) + 0.5) * w / new_w).astype(int)
    return mask[rows.clip(0, h - 1)][:, cols.clip(0, w - 1)]


class PetSegSource:
    """Random access to oxford_iiit_pet with masks; opened lazily, so it pickles."""

    def __init__(self, split: str, data_dir: str | None, image_size: int):
        self.split, self.data_dir, self.image_size = split, data_dir, image_size
        self._source = None

    def _open(self):
        if self._source is None:
            import tensorflow_datasets as tfds
            self._source = tfds.data_source("oxford_iiit_pet", split=self.split,
                                            data_dir=self.data_dir, download=False)
        return self._source

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return len(self._open())

    def __getitem__(self, i: int) -> dict:
        example = self._open()[int(i)]
        size = (self.image_size, self.image_size)
        image = resize_center_crop(np.asarray(example["image"]), size)
        trimap = np.asarray(example["segmentation_mask"])[..., 0]
        return {"image": image, "label": TRIMAP_TO_CLASS[mask_center_crop(trimap, size)]}


def load_pets_seg(split: str, data_dir: str | None = None, image_size: int = 224) -> Dataset:
    import tensorflow_datasets as tfds

    if split == "validation":
        raise MissingSplit("'oxford_iiit_pet_seg' has no validation split of its own.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for 'oxford_iiit_pet_seg'. "
                         f"Valid choices: {', '.join(SPLITS)}.")
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    source = PetSegSource(split, data_dir, image_size)
    try:
        source._open()
    except Exception as error:
        raise FileNotFoundError(
            f"TFDS dataset 'oxford_iiit_pet' is not prepared in the array_record format in "
            f"{data_dir or '~/tensorflow_datasets'}; prepare it once with `tfds build "
            f"oxford_iiit_pet --file_format=array_record` ({error}).") from error
    return Dataset(source, PET_CLASSES, (image_size, image_size, 3), "oxford_iiit_pet_seg",
                   *IMAGENET_STATS)
