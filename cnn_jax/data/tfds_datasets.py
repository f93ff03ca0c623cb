"""TensorFlow-datasets datasets, read through `tfds.data_source` (array_record files, random
access, no TensorFlow needed to read).

A dataset must be prepared once, into `data_dir` (default `~/tensorflow_datasets`), in the
array_record format: `python -m cnn_jax.data.prepare NAME --data_dir DIR` (see that module).
MNIST and Fashion-MNIST prepare without TensorFlow from their four original files.

Split "validation" is TFDS's own validation split where the prepared dataset has one and it is
not already this project's test split (imagenette and imagenet2012 test on TFDS's validation
split); otherwise it raises `MissingSplit`, and the training loop carves one from "train".
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from cnn_jax.data.dataset import Dataset, MissingSplit
from cnn_jax.data.image_ops import resize_center_crop
from cnn_jax.data.pipeline import load_into_memory

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclasses.dataclass(frozen=True)
class TFDSInfo:
    tfds_name: str
    test_split: str
    image_size: int | None  # None: every image already has the same size
    mean: tuple[float, ...]
    std: tuple[float, ...]


TFDS_DATASETS = {
    "mnist": TFDSInfo("mnist", "test", None, (0.1307,), (0.3081,)),
    "fashion_mnist": TFDSInfo("fashion_mnist", "test", None, (0.2860,), (0.3530,)),
    "cifar10": TFDSInfo("cifar10", "test", None, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": TFDSInfo("cifar100", "test", None, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenette": TFDSInfo("imagenette/320px-v2", "validation", 160, *IMAGENET_STATS),
    "imagenet2012": TFDSInfo("imagenet2012", "validation", 224, *IMAGENET_STATS),
}
SPLITS = ("train", "validation", "test")


class TFDSSource:
    """Random access to a prepared TFDS split; images resized and center-cropped to
    `image_size` where the dataset's images vary in size. Opened lazily, so it pickles."""

    def __init__(self, tfds_name: str, split: str, data_dir: str | None, image_size: int | None):
        self.tfds_name, self.split, self.data_dir, self.image_size = (
            tfds_name, split, data_dir, image_size)
        self._source = None

    def _open(self):
        if self._source is None:
            import tensorflow_datasets as tfds
            self._source = tfds.data_source(self.tfds_name, split=self.split,
                                            data_dir=self.data_dir, download=False)
        return self._source

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return len(self._open())

    def __getitem__(self, i: int) -> dict:
        return self._convert(self._open()[int(i)])

    def __getitems__(self, indices) -> list[dict]:
        source, keys = self._open(), [int(i) for i in indices]
        try:
            examples = source.__getitems__(keys)  # one batched read: much faster
        except TypeError:  # tfds.testing.mock_data's sources take other arguments
            examples = [source[k] for k in keys]
        return [self._convert(e) for e in examples]

    def labels(self, chunk: int = 4096) -> np.ndarray:
        """Every label of the split, read without decoding the images."""
        import tensorflow_datasets as tfds
        try:
            source = tfds.data_source(self.tfds_name, split=self.split, data_dir=self.data_dir,
                                      download=False,
                                      decoders={"image": tfds.decode.SkipDecoding()})
            examples = [e for start in range(0, len(source), chunk)
                        for e in source.__getitems__(list(range(start, min(start + chunk,
                                                                           len(source)))))]
        except (ImportError, TypeError):  # tfds.testing.mock_data: TensorFlow, other arguments
            source = self._open()
            examples = [source[i] for i in range(len(source))]
        return np.array([e["label"] for e in examples], np.int64)

    def _convert(self, example: dict) -> dict:
        image = np.asarray(example["image"])
        if self.image_size is not None:
            image = resize_center_crop(image, (self.image_size, self.image_size))
        return {"image": image, "label": np.int32(example["label"])}


def prepare_command(name: str, data_dir: str | None) -> str:
    where = f" --data_dir {data_dir}" if data_dir else ""
    manual = " --manual_dir <folder with the four .gz files>" if name in ("mnist", "fashion_mnist") else ""
    return f"python -m cnn_jax.data.prepare {name}{where}{manual}"


def load_tfds(split: str, *, name: str, data_dir: str | None = None, image_size: int | None = None,
              in_memory: bool | None = None) -> Dataset:
    """`name` is one of TFDS_DATASETS; `image_size` overrides the size variable-sized images
    are brought to (imagenette 160, imagenet2012 224). `in_memory` decodes the split once
    into memory; by default it does for the fixed-size (MNIST- and CIFAR-sized) datasets."""
    import tensorflow_datasets as tfds

    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for {name!r}. Valid choices: {', '.join(SPLITS)}.")
    info = TFDS_DATASETS[name]
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    size = image_size or info.image_size
    source = TFDSSource(info.tfds_name, info.test_split if split == "test" else "train",
                        data_dir, size)
    try:
        dataset_info = source._open().dataset_info
    except Exception as error:  # not prepared, or prepared in a format without random access
        builder = tfds.builder(info.tfds_name, data_dir=data_dir)
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"TFDS dataset {info.tfds_name!r} is not prepared in {builder.data_dir!r}. "
                f"Prepare it once with:\n    {prepare_command(name, data_dir)}\nor set "
                "config.dataset.data_dir to the folder that holds it.") from error
        raise ValueError(
            f"{info.tfds_name!r} in {builder.data_dir!r} cannot be read with random access "
            f"({error}). Prepare it again in the array_record format with:\n    "
            f"{prepare_command(name, data_dir)}") from error
    if split == "validation":
        if info.test_split == "validation" or "validation" not in dataset_info.splits:
            raise MissingSplit(f"{info.tfds_name!r} has no validation split of its own" + (
                " (its validation split is the test split here)."
                if info.test_split == "validation" else "."))
        source = TFDSSource(info.tfds_name, "validation", data_dir, size)
    features = dataset_info.features
    shape = tuple(features["image"].shape)
    if size is not None:
        shape = (size, size, shape[-1])
    dataset = Dataset(source, tuple(features["label"].names), shape, name,
                      info.mean, info.std)
    if in_memory if in_memory is not None else info.image_size is None:
        dataset = load_into_memory(dataset)
    return dataset
