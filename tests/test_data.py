"""The dataset interface, the registry, and the grain pipeline: reproducible shuffled training
batches, resumption, per-process shards, exact-once evaluation."""

import pickle

import numpy as np
import pytest

from cnn_jax.data import (ArraySource, eval_batches, from_arrays, get_dataset, split_for_devices,
                          steps_per_epoch, train_dataset, train_iterator)
from cnn_jax.data.pipeline import load_into_memory


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", "train"), get_dataset("digits", "test")


def test_digits_splits(digits):
    train, test = digits
    assert (len(train), len(test)) == (1437, 360)
    for ds in digits:
        images, labels = ds.source.images, ds.source.labels
        assert images.shape[1:] == ds.image_shape == (32, 32, 1) and images.dtype == np.float32
        assert labels.dtype == np.int32 and ds.num_classes == 10
        assert 0.0 <= images.min() and images.max() <= 1.0
    # mean/std are the training split's, for both splits.
    assert test.mean == train.mean == pytest.approx((train.source.images.mean(),), rel=1e-5)
    assert train.std == pytest.approx((train.source.images.std(),), rel=1e-4)
    # Stratified: every class holds about a fifth of its examples in the test split.
    n_train, n_test = (np.bincount(ds.source.labels, minlength=10) for ds in digits)
    assert np.all(np.abs(n_test / (n_train + n_test) - 0.2) < 0.02)
    np.testing.assert_array_equal(get_dataset("digits", "test").source.images, test.source.images)


def test_digits_native_size_matches_sklearn():
    from sklearn.datasets import load_digits
    ds = get_dataset("digits", "train", image_size=8)
    raw = load_digits()
    # Each 8x8 image (scaled to [0, 1]) is one of scikit-learn's images with the same label.
    lookup = {img.tobytes(): y for img, y in zip((raw.images / 16).astype(np.float32), raw.target)}
    for i in range(50):
        example = ds.source[i]
        assert lookup[example["image"][..., 0].tobytes()] == example["label"]


@pytest.mark.parametrize("call,match", [
    (lambda: get_dataset("mnist_fake", "train"),
     r"Unknown dataset 'mnist_fake'. Valid choices: cifar10, cifar100, digits, fashion_mnist, "
     r"image_folder, imagenet2012, imagenette, membrane, mnist, "
     r"oxford_iiit_pet_seg, segmentation_folder, subset"),
    (lambda: get_dataset("digits", "valid"), r"Unknown split 'valid'.*train, test"),
    (lambda: get_dataset("digits", "train", size=16), r"Unknown option.*'size'.*image_size"),
    (lambda: get_dataset("mnist", "valid"),
     r"Unknown split 'valid' for 'mnist'.*train, validation, test"),
])
def test_dataset_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def small(n=10, num_classes=3):
    """Example i's pixels all equal i, so a batch tells which examples it holds."""
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1), np.float32)
    return from_arrays(images, (np.arange(n) % num_classes).astype(np.int32),
                       tuple("abc"[:num_classes]), "small")


def ids(batch):
    return batch["image"][:, 0, 0, 0].astype(int).tolist()


def test_labels_outside_range_rejected():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*\[3, 7\]"):
        from_arrays(np.zeros((4, 2, 2, 1), np.float32), np.array([0, 3, 7, 1]), ("a", "b", "c"))
    with pytest.raises(ValueError, match=r"images must be \(N, H, W, C\)"):
        ArraySource(np.zeros((4, 2, 2), np.float32), np.zeros(4))


def run_ids(ds, batch_size, seed=0, num_epochs=3, **kw):
    return [ids(b) for b in train_iterator(ds, batch_size, seed=seed, num_epochs=num_epochs,
                                           num_threads=0, **kw)]


def test_train_batches_reproducible_and_each_example_once_per_epoch():
    ds = small(10)
    run = run_ids(ds, 3)
    assert steps_per_epoch(ds, 3) == 3 and len(run) == 9 and all(len(b) == 3 for b in run)
    epochs = [sum(run[i:i + 3], []) for i in (0, 3, 6)]
    for epoch in epochs:  # 10 // 3 full batches: 9 distinct examples, the last one dropped
        assert len(set(epoch)) == 9
    assert len({tuple(e) for e in epochs}) == 3  # a fresh shuffle each epoch: no two alike
    assert run_ids(ds, 3) == run  # same seed, same batches, same order
    assert run_ids(ds, 3, seed=1) != run
    threaded = [ids(b) for b in train_iterator(ds, 3, seed=0, num_epochs=3, num_threads=2)]
    assert threaded == run  # read-ahead threads do not change the order


@pytest.mark.parametrize("k", [1, 3, 4, 8])
def test_resume_at_step_k_sees_the_uninterrupted_batches(k):
    ds = small(10)
    full = run_ids(ds, 3)
    assert run_ids(ds, 3, start_step=k) == full[k:]


def test_iterator_state_save_and_restore():
    ds = small(10)
    it = train_iterator(ds, 3, seed=5, num_epochs=3, num_threads=0)
    for _ in range(4):
        next(it)
    state = pickle.loads(pickle.dumps(it.get_state()))  # what a checkpoint stores
    expected = [ids(b) for b in it]
    fresh = train_iterator(ds, 3, seed=5, num_epochs=3, num_threads=0)
    fresh.set_state(state)
    assert [ids(b) for b in fresh] == expected and len(expected) == 5


def test_process_shards_are_disjoint_and_equal():
    ds = small(11)  # 11 // 3 = 3 examples a process; the 2 left over are read by none
    shards = [sum(run_ids(ds, 1, num_epochs=1, process_index=p, process_count=3), [])
              for p in range(3)]
    for p, shard in enumerate(shards):
        assert sorted(shard) == list(range(9))[p::3]
    assert steps_per_epoch(ds, 2, process_count=3) == 1
    assert [len(run_ids(ds, 2, num_epochs=2, process_index=p, process_count=3))
            for p in range(3)] == [2, 2, 2]  # every process runs the same number of steps


@pytest.mark.parametrize("n,batch_size,processes", [(10, 4, 1), (10, 5, 1), (3, 8, 1),
                                                    (11, 2, 3), (7, 4, 2)])
def test_eval_covers_every_example_exactly_once(n, batch_size, processes):
    ds = small(n)
    seen, counts = [], []
    for p in range(processes):
        batches = list(eval_batches(ds, batch_size, process_index=p, process_count=processes,
                                    num_threads=0))
        counts.append(len(batches))
        for b in batches:
            assert len(b["label"]) == batch_size and b["mask"].dtype == np.float32
            real = b["mask"] > 0
            seen += b["image"][:, 0, 0, 0][real].astype(int).tolist()
            assert np.all(b["mask"][real.argmin():] == 0) or real.all()  # padding at the end
    assert sorted(seen) == list(range(n))
    assert len(set(counts)) == 1  # every process runs the same number of eval batches


def test_eval_labels_follow_images():
    ds = small(10)
    for b in eval_batches(ds, 4, num_threads=0):
        real = b["mask"] > 0
        np.testing.assert_array_equal(b["label"][real], np.array(ids(b))[real] % 3)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        train_dataset(small(), batch_size, seed=0, num_epochs=1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        eval_batches(small(), batch_size)


def test_pipeline_errors():
    with pytest.raises(ValueError, match="batch_size 20 is larger than the 10 training examples"):
        train_dataset(small(10), 20, seed=0, num_epochs=1)
    with pytest.raises(ValueError, match=r"process_index must lie in \[0, 2\), got 2"):
        train_dataset(small(10), 2, seed=0, num_epochs=1, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="start_step 100 is outside the run's 9 steps"):
        train_iterator(small(10), 3, seed=0, num_epochs=3, start_step=100)


def test_load_into_memory_keeps_every_example():
    ds = small(10)
    lazy = ds.__class__(ListSource([ds.source[i] for i in range(10)]), ds.class_names,
                        ds.image_shape, "lazy")
    loaded = load_into_memory(lazy, chunk_size=4)
    np.testing.assert_array_equal(loaded.source.images, ds.source.images)
    np.testing.assert_array_equal(loaded.source.labels, ds.source.labels)
    assert loaded.class_names == ds.class_names and loaded.name == "lazy"


class ListSource:
    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def test_split_for_devices_keeps_examples_in_order():
    batch = next(train_iterator(small(10), 8, seed=0, num_epochs=1, num_threads=0))
    split = split_for_devices(batch, 4)
    assert split["image"].shape == (4, 2, 2, 2, 1) and split["label"].shape == (4, 2)
    assert split["image"][:, :, 0, 0, 0].ravel().tolist() == ids(batch)
    with pytest.raises(ValueError, match="batch of 8 examples cannot be split evenly over 3 devices"):
        split_for_devices(batch, 3)
