"""TFDS datasets: every registered one through `tfds.testing.mock_data`, clear errors for
missing ones, and real MNIST prepared offline from the original files in ../shared/data/mnist
(prepared without TensorFlow or network, read through `tfds.data_source` + grain, trained with
LeNet-5)."""

import gzip
import os
import shutil
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnn_jax.data import eval_batches, get_dataset, steps_per_epoch, train_iterator
from cnn_jax.data.tfds_datasets import TFDS_DATASETS, TFDSSource
from conftest import require_shared_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist")
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

# name: (image shape the dataset gives, number of classes)
EXPECTED = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "imagenette": ((160, 160, 3), 10),
    "imagenet2012": ((224, 224, 3), 1000),
}


def test_every_registered_tfds_dataset_is_tested():
    assert set(EXPECTED) == set(TFDS_DATASETS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mock_dataset_shapes_labels_and_batches(name):
    shape, num_classes = EXPECTED[name]
    with tfds.testing.mock_data(num_examples=21):
        train, test = get_dataset(name, "train"), get_dataset(name, "test")
        assert len(train) == len(test) == 21
        for ds in (train, test):
            assert ds.image_shape == shape and ds.num_classes == num_classes
            assert len(ds.class_names) == num_classes and ds.name == name
            assert len(ds.mean) == len(ds.std) == shape[-1]
        batches = list(train_iterator(train, 4, seed=0, num_epochs=2, num_threads=2))
        assert len(batches) == 2 * steps_per_epoch(train, 4) == 10
        for b in batches:
            assert b["image"].shape == (4, *shape) and b["image"].dtype == np.uint8
            assert b["label"].dtype == np.int32
            assert 0 <= b["label"].min() and b["label"].max() < num_classes
        evals = list(eval_batches(test, 8, num_threads=2))
        assert [len(b["label"]) for b in evals] == [8, 8, 8]
        assert sum(b["mask"].sum() for b in evals) == 21
        assert all(b["image"].shape == (8, *shape) for b in evals)


def test_variable_size_images_are_resized_lazily():
    with tfds.testing.mock_data(num_examples=5):
        ds = get_dataset("imagenette", "train", image_size=64)
        assert isinstance(ds.source, TFDSSource)  # decoded on demand, not held in memory
        assert ds.image_shape == (64, 64, 3) and ds.source[3]["image"].shape == (64, 64, 3)
        import pickle
        clone = pickle.loads(pickle.dumps(ds.source))  # what grain's worker processes get
        np.testing.assert_array_equal(clone[3]["image"], ds.source[3]["image"])
        for one, many in zip([ds.source[3], ds.source[1]], ds.source.__getitems__([3, 1])):
            np.testing.assert_array_equal(one["image"], many["image"])
            assert one["label"] == many["label"]


@pytest.mark.parametrize("name", ["cifar10", "mnist", "imagenette"])
def test_missing_dataset_says_how_to_prepare_it(tmp_path, name):
    with pytest.raises(FileNotFoundError) as error:
        get_dataset(name, "train", data_dir=str(tmp_path))
    message = str(error.value)
    assert "is not prepared in" in message and str(tmp_path) in message
    assert f"python -m cnn_jax.data.prepare {name} --data_dir {tmp_path}" in message
    assert not os.listdir(tmp_path) or "downloads" not in os.listdir(tmp_path)


def read_idx(path):
    """IDX files, independently of cnn_jax.data.prepare: magic (2 zero bytes, type, ndim), then
    ndim big-endian uint32 sizes, then the bytes."""
    with gzip.open(path) as f:
        raw = f.read()
    assert raw[:2] == b"\0\0" and raw[2] == 0x08
    dims = np.frombuffer(raw, ">u4", count=raw[3], offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)


@pytest.fixture
def shared_mnist():
    """The original MNIST files in ../shared/data/mnist: a skip without them, a failure in CI
    (which has shared/ beside the clone)."""
    for f in MNIST_FILES:
        require_shared_data("mnist", f)
    return SHARED_MNIST


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    for f in MNIST_FILES:
        require_shared_data("mnist", f)
    """MNIST prepared with the README's command, from the shared files, in a fresh data_dir."""
    data_dir = tmp_path_factory.mktemp("tfds")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "cnn_jax.data.prepare", "mnist", "--data_dir", str(data_dir),
         "--manual_dir", SHARED_MNIST], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"prepared MNIST in {time.perf_counter() - start:.1f}s")
    assert os.path.isdir(data_dir / "mnist" / "3.0.1")
    return str(data_dir)


def test_prepared_mnist_equals_the_original_files(mnist_dir):
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = get_dataset("mnist", split, data_dir=mnist_dir)
        images = read_idx(os.path.join(SHARED_MNIST, f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(SHARED_MNIST, f"{prefix}-labels-idx1-ubyte.gz"))
        assert len(ds) == len(labels) == {"train": 60000, "test": 10000}[split]
        assert ds.class_names == tuple(str(i) for i in range(10))
        # TFDS stores examples in its own (hashed-key) order: compare as multisets.
        ours = Counter(zip(map(bytes, ds.source.images[..., 0]), ds.source.labels.tolist()))
        assert ours == Counter(zip(map(bytes, images), labels.tolist()))
    # tfds.data_source reads the same files, as any TFDS user would.
    source = tfds.data_source("mnist", split="test", data_dir=mnist_dir)
    np.testing.assert_array_equal(np.asarray(source[7]["image"]), ds.source.images[7])


def test_lenet5_on_real_mnist_reaches_98_8_percent_in_2_epochs(mnist_dir, tmp_path):
    """The issue's bar: >= 98.8% on the full 10,000-image test split after at most 2 epochs
    (measured: 99.02%, about 55 s of training on 2 CPU cores)."""
    from experiments.configs.lenet5_mnist import get_config
    from cnn_jax.train import train_and_evaluate

    config = get_config()
    config.dataset.data_dir = mnist_dir
    config.validation_fraction = 0.0  # the bar is for all 60,000 training images
    assert config.num_epochs <= 2
    start = time.perf_counter()
    _, history = train_and_evaluate(config, str(tmp_path / "run"))
    final = history[-1]
    print(f"LeNet-5 on MNIST: {final['test_accuracy']:.2%} test accuracy on "
          f"{final['test_num_examples']} images, {time.perf_counter() - start:.0f}s")
    assert final["test_num_examples"] == 10000
    assert final["test_accuracy"] >= 0.988


def test_prepare_checks_the_files(tmp_path, shared_mnist):
    from cnn_jax.data.prepare import prepare

    manual = tmp_path / "manual"
    manual.mkdir()
    for f in MNIST_FILES[1:]:
        shutil.copy(os.path.join(SHARED_MNIST, f), manual / f)
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.gz is missing"):
        prepare("mnist", str(tmp_path / "data"), str(manual))
    (manual / MNIST_FILES[0]).write_bytes(b"not the real file")
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.gz has sha256 [0-9a-f]{64}, "
                                                r"TFDS expects 440fcabf"):
        prepare("mnist", str(tmp_path / "data"), str(manual))
    assert not (tmp_path / "data" / "mnist" / "3.0.1").exists()  # nothing half-written


def test_prepare_without_tensorflow_says_what_to_install(tmp_path):
    try:
        import tensorflow  # noqa: F401
        pytest.skip("TensorFlow is installed here, so the builder would run (and download)")
    except ImportError:
        pass
    from cnn_jax.data.prepare import prepare
    with pytest.raises(SystemExit, match=r'needs TensorFlow: pip install "cnn_jax\[prepare\]"'):
        prepare("cifar10", str(tmp_path))
    with pytest.raises(ValueError, match="Unknown TFDS dataset 'cifar11'. Valid choices: mnist"):
        prepare("cifar11", str(tmp_path))
