"""The task record (cnn_jax/tasks): every task honours the same contract the loop relies on,
config.task is resolved from the dataset, and the one train step serves every task, gradient
accumulation included."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from cnn_jax.config import default_config
from cnn_jax.tasks import TASKS, get_task, task_name
from cnn_jax.train.loop import epoch_metrics
from cnn_jax.train.step import create_train_state, train_step


def example_batch(task, n=4, shape=(8, 8, 3), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    batch = {"image": rng.normal(size=(n, *shape)).astype(np.float32)}
    for key, (target_shape, dtype) in task.targets(shape).items():
        batch[key] = rng.integers(0, classes, (n, *target_shape)).astype(dtype)
    return batch


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_honours_the_contract(name):
    task = get_task(name)
    config = default_config()
    options = task.options(config)
    batch = example_batch(task, classes=6)  # 6 > 5, so classification computes top-5
    logits_shape = (4, 6) if name == "classification" else (4, 8, 8, 6)
    logits = jnp.asarray(np.random.default_rng(1).normal(size=logits_shape), jnp.float32)
    task.check_model(logits_shape, (8, 8, 3), 6, "m")
    loss = task.loss(logits, batch, **options)
    assert loss.shape == () and np.isfinite(loss)
    assert set(task.train_metrics(logits, batch, **options)) == {"accuracy"}
    counts = task.eval_counts(logits, {**batch, "mask": np.ones(4, np.float32)}, **options)
    summary = task.summarize(counts)
    assert set(task.metrics) <= set(summary)  # every metric the task names is computed
    assert task.best_metric in epoch_metrics(task)
    assert 0 <= summary["accuracy"] <= 1 and summary["num_examples"] == 4
    assert isinstance(task.log_line(summary), str)
    # doubling every example's weight is the same set twice: additive counts
    twice = task.summarize(jax.tree.map(lambda c: c * 2, counts))
    np.testing.assert_allclose(twice["accuracy"], summary["accuracy"])


def test_config_task_comes_from_the_dataset_unless_given():
    config = default_config()
    assert config.task == "" and task_name(config) == "classification"
    config.dataset.name = "membrane"
    assert task_name(config) == "segmentation"
    config.task = "classification"
    assert task_name(config) == "classification"
    with pytest.raises(ValueError, match=r"Unknown task 'boxes'.*classification, segmentation"):
        get_task("boxes")


class PixelNet(nn.Module):  # no BatchNorm: accumulated micro-batches equal the whole batch
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Conv(self.num_classes, (3, 3))(nn.relu(nn.Conv(4, (3, 3))(x)))


def test_segmentation_grad_accumulation_equals_one_step_on_the_whole_batch():
    task = get_task("segmentation")
    options = task.options(default_config())
    batch = example_batch(task, n=8)
    batch["label"][0, :3] = 255  # ignored pixels in one micro-batch only
    state = create_train_state(PixelNet(), optax.sgd(0.5), jax.random.key(0), (8, 8, 3))
    step = functools.partial(train_step, loss_fn=functools.partial(task.loss, **options),
                             metrics_fn=functools.partial(task.train_metrics, **options))
    # Per-micro-batch means averaged equal the whole batch's mean only when micro-batches hold
    # as many labelled pixels; so compare against the mean of the two halves' losses.
    whole, m1 = jax.jit(step)(state, batch)
    accum, m2 = jax.jit(functools.partial(step, accum_steps=2))(state, batch)
    halves = [task.loss(state.apply_fn({"params": state.params}, batch["image"][s]),
                        {"label": batch["label"][s]}, **options)
              for s in (slice(0, 4), slice(4, 8))]
    np.testing.assert_allclose(m2["loss"], np.mean(halves), rtol=1e-5)
    np.testing.assert_allclose(m1["accuracy"], m2["accuracy"], rtol=1e-6)  # over the whole batch
    # without ignored pixels the two are the same update
    batch["label"][0, :3] = 0
    a, _ = jax.jit(step)(state, batch)
    b, _ = jax.jit(functools.partial(step, accum_steps=2))(state, batch)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
