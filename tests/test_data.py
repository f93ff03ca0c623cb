"""The embedded dataset, batching (shuffled training, exact-once evaluation) and augmentation."""

import jax
import numpy as np
import pytest

from cnn_jax.data import ArrayDataset, eval_batches, get_dataset, train_batches
from cnn_jax.data.transforms import make_augment, random_crop, random_hflip


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", "train"), get_dataset("digits", "test")


def test_digits_splits(digits):
    train, test = digits
    assert (len(train), len(test)) == (1437, 360)
    for ds in digits:
        assert ds.images.shape[1:] == (32, 32, 1) and ds.images.dtype == np.float32
        assert ds.labels.dtype == np.int32 and ds.num_classes == 10
        assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    # Stratified: every class holds about a fifth of its examples in the test split.
    counts = np.bincount(test.labels, minlength=10) / (np.bincount(train.labels, minlength=10)
                                                        + np.bincount(test.labels, minlength=10))
    assert np.all(np.abs(counts - 0.2) < 0.02)
    again = get_dataset("digits", "test")
    np.testing.assert_array_equal(again.images, test.images)


def test_digits_native_size_matches_sklearn():
    from sklearn.datasets import load_digits
    ds = get_dataset("digits", "train", image_size=8)
    raw = load_digits()
    # Each 8x8 image (scaled to [0, 1]) is one of scikit-learn's images with the same label.
    lookup = {img.tobytes(): y for img, y in zip((raw.images / 16).astype(np.float32), raw.target)}
    for img, y in zip(ds.images[:50, ..., 0], ds.labels[:50]):
        assert lookup[img.tobytes()] == y


@pytest.mark.parametrize("call,match", [
    (lambda: get_dataset("mnist_fake", "train"), r"Unknown dataset 'mnist_fake'. Valid choices: digits"),
    (lambda: get_dataset("digits", "validation"), r"Unknown split 'validation'.*train, test"),
    (lambda: get_dataset("digits", "train", size=16), r"Unknown option.*'size'.*image_size"),
])
def test_dataset_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def small(n=10, num_classes=3):
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1), np.float32)
    return ArrayDataset(images, (np.arange(n) % num_classes).astype(np.int32),
                        tuple("abc"[:num_classes]), "small")


def test_labels_outside_range_rejected():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*\[3, 7\]"):
        ArrayDataset(np.zeros((4, 2, 2, 1), np.float32), np.array([0, 3, 7, 1]), ("a", "b", "c"))


def test_train_batches_reproducible_and_each_example_once():
    ds = small(10)
    ids = lambda epoch, seed=0: [b["image"][:, 0, 0, 0].astype(int).tolist()
                                 for b in train_batches(ds, 3, seed=seed, epoch=epoch)]
    first = ids(1)
    assert len(first) == 3 and all(len(b) == 3 for b in first)  # 10 // 3 full batches
    assert len(set(sum(first, []))) == 9
    assert ids(1) == first
    assert ids(2) != first and ids(1, seed=1) != first


def test_eval_batches_cover_every_example_exactly_once():
    ds = small(10)
    batches = list(eval_batches(ds, 4))
    assert [len(b["label"]) for b in batches] == [4, 4, 4]
    seen = np.concatenate([b["image"][:, 0, 0, 0][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(seen, np.arange(10))
    assert batches[-1]["mask"].tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize("batch_size", [0, -1])
def test_non_positive_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be positive"):
        next(train_batches(small(), batch_size, seed=0, epoch=1))
    with pytest.raises(ValueError, match="batch_size must be positive"):
        next(eval_batches(small(), batch_size))


def test_random_crop_is_a_translation():
    images = np.random.default_rng(0).normal(size=(6, 5, 7, 2)).astype(np.float32)
    key = jax.random.key(3)
    out = np.asarray(random_crop(key, images, 2))
    offsets = np.asarray(jax.random.randint(key, (6, 2), 0, 5))
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i, (dy, dx) in enumerate(offsets):
        np.testing.assert_array_equal(out[i], padded[i, dy:dy + 5, dx:dx + 7])
    assert len({tuple(o) for o in offsets}) > 1


def test_hflip_mirrors_some_examples():
    images = np.random.default_rng(0).normal(size=(16, 3, 4, 1)).astype(np.float32)
    out = np.asarray(random_hflip(jax.random.key(0), images))
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_augment_deterministic_under_key():
    augment = make_augment({"crop_padding": 2, "hflip": True})
    images = np.random.default_rng(0).normal(size=(8, 6, 6, 3)).astype(np.float32)
    a = augment(jax.random.key(0), images)
    np.testing.assert_array_equal(a, augment(jax.random.key(0), images))
    assert not np.array_equal(a, augment(jax.random.key(1), images))
    assert make_augment({"crop_padding": 0, "hflip": False}) is None


def test_augment_errors():
    with pytest.raises(ValueError, match=r"Unknown augmentation option.*'rotate'"):
        make_augment({"rotate": 10})
    with pytest.raises(ValueError, match="crop_padding must be >= 0"):
        make_augment({"crop_padding": -1})
