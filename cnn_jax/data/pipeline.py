"""Batches from a `Dataset`, through grain.

Training: the whole run is one random-access sequence of batches, `train_dataset(...)[step]`
is the batch of global step `step`. Each epoch is a fresh shuffle derived from (seed, epoch)
alone, batches never straddle epochs (the incomplete last batch of an epoch is dropped), so
the same seed gives the same batches in the same order, and a run resumed at step k reads
exactly the batches an uninterrupted run reads from step k on (`train_iterator(...,
start_step=k)`; grain's own `iterator.get_state()` / `set_state()` work too).

Evaluation covers every example exactly once: the last batch is padded and its padding
carries `mask == 0` (an (N,) weight per example, whatever the task's 'label' holds).

Several processes (hosts): each reads a disjoint, equal-sized shard (examples
`process_index::process_count`), so every process runs the same number of steps; the batch
size is then the per-process batch.
"""

from __future__ import annotations

import dataclasses
import math

import grain
import numpy as np

from cnn_jax.data.dataset import ArraySource, Dataset


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")


def _check_shard(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must lie in [0, {process_count}), got {process_index}.")


def steps_per_epoch(dataset: Dataset, batch_size: int, process_count: int = 1) -> int:
    _check_batch_size(batch_size)
    return (len(dataset) // process_count) // batch_size


def train_dataset(dataset: Dataset, batch_size: int, *, seed: int, num_epochs: int,
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """The run's batches as a random-access grain dataset: element `step` is that step's batch."""
    _check_batch_size(batch_size)
    _check_shard(process_index, process_count)
    per_process = len(dataset) // process_count
    if per_process < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the {per_process} training "
                         f"examples of {dataset.name!r} each process reads.")
    source = dataset.source
    in_memory = isinstance(source, ArraySource)
    # In memory, the batches are index arrays gathered with one NumPy indexing each: the same
    # batches as example by example, at a fraction of the host time (which on a CPU-only
    # machine comes out of the train step's cores).
    ds = grain.MapDataset.range(len(source)) if in_memory else grain.MapDataset.source(source)
    if process_count > 1:  # (one process: the identity, which costs 4 us an example)
        ds = ds[:per_process * process_count][process_index::process_count]
    ds = ds.shuffle(seed=seed).batch(batch_size, drop_remainder=True)
    if in_memory:
        ds = ds.map(lambda index: {"image": source.images[index], "label": source.labels[index]})
    return ds.repeat(num_epochs)


def train_iterator(dataset: Dataset, batch_size: int, *, seed: int, num_epochs: int,
                   start_step: int = 0, process_index: int = 0, process_count: int = 1,
                   num_threads: int = 2, prefetch: int = 4) -> grain.DatasetIterator:
    """An iterator over the run's batches from `start_step`, read ahead by `num_threads`
    threads (`num_threads=0` reads in the calling thread)."""
    ds = train_dataset(dataset, batch_size, seed=seed, num_epochs=num_epochs,
                       process_index=process_index, process_count=process_count)
    if not 0 <= start_step <= len(ds):
        raise ValueError(f"start_step {start_step} is outside the run's {len(ds)} steps.")
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(ds[start_step:].to_iter_dataset(options))


class _PaddedShard:
    """A process's share of an evaluation set, padded to `length` with masked examples."""

    def __init__(self, source, indices: np.ndarray, length: int, image_shape, image_dtype,
                 label_shape=()):
        self.source, self.indices, self.length = source, indices, length
        self.padding = {"image": np.zeros(image_shape, image_dtype),
                        "label": np.zeros(label_shape, np.int32), "mask": np.float32(0)}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if i >= len(self.indices):
            return self.padding
        example = self.source[int(self.indices[i])]
        return {"image": example["image"], "label": np.asarray(example["label"], np.int32),
                "mask": np.float32(1)}


def eval_batches(dataset: Dataset, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1, num_threads: int = 2, prefetch: int = 4):
    """Every example exactly once, in order, in batches of `batch_size` with a 'mask'.

    With several processes each gets examples `process_index::process_count`, padded so that
    every process runs the same number of batches.
    """
    _check_batch_size(batch_size)
    _check_shard(process_index, process_count)
    indices = np.arange(process_index, len(dataset), process_count)
    num_batches = math.ceil(math.ceil(len(dataset) / process_count) / batch_size)
    if len(dataset) == 0:
        return iter(())
    first = dataset.source[0]
    shard = _PaddedShard(dataset.source, indices, num_batches * batch_size,
                         np.shape(first["image"]), np.asarray(first["image"]).dtype,
                         np.shape(first["label"]))
    ds = grain.MapDataset.source(shard).batch(batch_size)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(options))


def load_into_memory(dataset: Dataset, chunk_size: int = 4096) -> Dataset:
    """The same dataset with every example decoded once into arrays (for MNIST/CIFAR-sized
    sets: decoding PNGs each epoch would cost more than training on them). Reads in chunks
    through the source's `__getitems__` where it has one: 3x faster on MNIST than one
    example at a time through grain's threads, which contend for the GIL."""
    source = dataset.source
    images, labels = [], []
    for start in range(0, len(source), chunk_size):
        indices = range(start, min(start + chunk_size, len(source)))
        examples = (source.__getitems__(list(indices)) if hasattr(source, "__getitems__")
                    else [source[i] for i in indices])
        images += [np.asarray(e["image"]) for e in examples]
        labels += [e["label"] for e in examples]
    return dataclasses.replace(dataset, source=ArraySource(np.stack(images),
                                                           np.asarray(labels, np.int32)))


def split_for_devices(batch: dict, num_devices: int) -> dict:
    """(B, ...) arrays -> (num_devices, B // num_devices, ...): a process's batch split evenly
    over its local devices (the layout `jax.pmap` takes)."""
    size = len(next(iter(batch.values())))
    if size % num_devices:
        raise ValueError(f"A batch of {size} examples cannot be split evenly over {num_devices} "
                         f"devices; make the per-process batch size a multiple of {num_devices}.")
    return {k: np.reshape(v, (num_devices, size // num_devices, *np.shape(v)[1:]))
            for k, v in batch.items()}
