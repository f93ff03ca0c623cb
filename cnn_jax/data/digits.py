"""The embedded default dataset: scikit-learn's bundled 8x8 handwritten digits (UCI optdigits
test set, 1,797 images, 10 classes), needing no network.

Images are scaled to [0, 1] and resized (bilinear) to `image_size`, 32x32 by default so that
LeNet-5 takes them as it takes padded MNIST. The split is a fixed, stratified 80/20
(1,437 train / 360 test) that does not depend on any run's seed. There is no own validation
split ("validation" raises MissingSplit): the training loop carves one from train.
"""

from __future__ import annotations

import numpy as np

from cnn_jax.data.dataset import Dataset, MissingSplit, channel_stats, from_arrays

SPLITS = ("train", "test")


def load_digits(split: str, image_size: int = 32) -> Dataset:
    from PIL import Image
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if split == "validation":
        raise MissingSplit("'digits' has no validation split of its own.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for 'digits'. Valid choices: {', '.join(SPLITS)}.")
    if image_size < 8:
        raise ValueError(f"digits image_size must be >= 8 (the native size), got {image_size}.")
    digits = sklearn_digits()
    images = digits.images.astype(np.float32) / 16.0
    train_idx, test_idx = train_test_split(np.arange(len(images)), test_size=0.2,
                                           stratify=digits.target, random_state=0)

    def resize(idx):
        out = np.stack([np.asarray(Image.fromarray(img).resize((image_size, image_size),
                                                                Image.BILINEAR))
                        for img in images[idx]])
        return np.clip(out, 0.0, 1.0)[..., None].astype(np.float32)

    idx = train_idx if split == "train" else test_idx
    mean, std = channel_stats(resize(train_idx))  # both splits normalise alike
    return from_arrays(resize(idx), digits.target[idx], tuple(str(d) for d in range(10)),
                       "digits", mean, std)
