"""Prepare a TFDS dataset once, in the array_record format that `tfds.data_source` reads.

    python -m cnn_jax.data.prepare mnist --data_dir ~/tensorflow_datasets \
        --manual_dir path/to/folder_with_the_four_gz_files
    python -m cnn_jax.data.prepare cifar10 --data_dir ~/tensorflow_datasets

MNIST and Fashion-MNIST are prepared from their four original files (train-images-idx3-ubyte.gz,
train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz), checked
against TFDS's own checksums, without TensorFlow and without network. Every other dataset goes
through TFDS's own builder, which downloads it and needs TensorFlow:
`pip install "cnn_jax[prepare]"`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys

import numpy as np

from cnn_jax.data.tfds_datasets import TFDS_DATASETS

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzipped), as LeCun's MNIST distribution stores arrays."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _check_files(tfds_name: str, manual_dir: str) -> None:
    """Every file exists and has the sha256 TFDS records for it."""
    import tensorflow_datasets as tfds

    url_infos = tfds.builder_cls(tfds_name).url_infos or {}
    expected = {os.path.basename(url): info for url, info in url_infos.items()}
    problems = []
    for name in sum(IDX_FILES.values(), ()):
        path = os.path.join(manual_dir, name)
        if not os.path.exists(path):
            problems.append(f"{path} is missing")
            continue
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        if name in expected and digest != expected[name].checksum:
            problems.append(f"{path} has sha256 {digest}, TFDS expects {expected[name].checksum}")
    if problems:
        raise FileNotFoundError("Cannot prepare from " + manual_dir + ":\n  " + "\n  ".join(problems))


def _idx_builder_class(tfds_name: str):
    """TFDS's own MNIST/Fashion-MNIST builder (same name, version and features, so
    `tfds.data_source(tfds_name)` reads the result), reading the IDX files with NumPy."""
    from PIL import Image
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    base = tfds_mnist.MNIST if tfds_name == "mnist" else tfds_mnist.FashionMNIST

    class FromIdxFiles(base, skip_registration=True):
        name = tfds_name
        MANUAL_DOWNLOAD_INSTRUCTIONS = "The four IDX .gz files, in manual_dir."

        def _split_generators(self, dl_manager):
            folder = os.fspath(dl_manager.manual_dir)
            return {split: self._examples(os.path.join(folder, images), os.path.join(folder, labels))
                    for split, (images, labels) in IDX_FILES.items()}

        def _examples(self, images_path, labels_path):
            images, labels = read_idx(images_path), read_idx(labels_path)
            for i, (image, label) in enumerate(zip(images, labels)):
                # PIL images are PNG-encoded by PIL; NumPy arrays would need TensorFlow.
                yield i, {"image": Image.fromarray(image), "label": int(label)}

    return FromIdxFiles


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> str:
    """Prepares `name` in `data_dir`; returns the folder it wrote."""
    import tensorflow_datasets as tfds

    if name not in TFDS_DATASETS:
        raise ValueError(f"Unknown TFDS dataset {name!r}. Valid choices: {', '.join(TFDS_DATASETS)}.")
    tfds_name = TFDS_DATASETS[name].tfds_name
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    if name in ("mnist", "fashion_mnist") and manual_dir:
        builder = _idx_builder_class(tfds_name)(data_dir=data_dir, file_format="array_record")
        _check_files(tfds_name, manual_dir)
    else:
        try:
            import tensorflow  # noqa: F401  (TFDS's builders download and encode with it)
        except ImportError:
            raise SystemExit(
                f"Preparing {name!r} uses TFDS's builder, which needs TensorFlow: "
                'pip install "cnn_jax[prepare]"' + (
                    ". MNIST and Fashion-MNIST need no TensorFlow when given --manual_dir."
                    if name in ("mnist", "fashion_mnist") else "."))
        builder = tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=config)
    return builder.data_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(TFDS_DATASETS))
    parser.add_argument("--data_dir", default=None, help="default: ~/tensorflow_datasets")
    parser.add_argument("--manual_dir", default=None,
                        help="folder holding files downloaded by hand (MNIST: the four .gz files)")
    args = parser.parse_args(argv)
    path = prepare(args.name, args.data_dir, args.manual_dir)
    print(f"Prepared {args.name} in {path}", file=sys.stderr)


if __name__ == "__main__":
    from cnn_jax.errors import run_main
    sys.exit(run_main(main))
