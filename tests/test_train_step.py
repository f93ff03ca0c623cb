"""The train step: pure, compiled once, right in train vs eval, and able to learn."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from cnn_jax.data import get_dataset
from cnn_jax.layers import DenseBlock
from cnn_jax.models import ResNet, BasicBlock, get_model
from cnn_jax.train import create_train_state, cross_entropy, eval_step, train_step
from cnn_jax.train.optim import make_optimizer


def tiny_resnet(num_classes=4, width=4):
    return ResNet(stage_sizes=(1, 1), block_cls=BasicBlock, num_classes=num_classes,
                  stem="cifar", width=width)


def random_batch(seed, n=8, shape=(12, 12, 3), num_classes=4):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(n, *shape)).astype(np.float32),
            "label": rng.integers(0, num_classes, n).astype(np.int32)}


def make_state(model, shape, lr=0.05, seed=0, name="sgd"):
    return create_train_state(model, make_optimizer({"name": name, "momentum": 0.9}, lr),
                              jax.random.key(seed), shape)


def leaves(tree):
    def host(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.array(x)
    return [host(x) for x in jax.tree.leaves(tree)]


def test_same_inputs_same_outputs_and_inputs_untouched():
    state = make_state(tiny_resnet(), (12, 12, 3))
    batch = random_batch(0)
    before_state, before_batch = leaves(state), leaves(batch)
    step = jax.jit(train_step)  # no donation, so the inputs stay readable
    out1, m1 = step(state, batch)
    out2, m2 = step(state, batch)
    for a, b in zip(leaves((out1, m1)), leaves((out2, m2))):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before_state + before_batch, leaves(state) + leaves(batch)):
        np.testing.assert_array_equal(a, b)
    assert int(out1.step) == 1 and int(state.step) == 0


def test_compiled_once_across_steps():
    traces = []

    def counted(state, batch):
        traces.append(1)  # runs only while tracing
        return train_step(state, batch)

    state = make_state(tiny_resnet(), (12, 12, 3))
    step = jax.jit(counted, donate_argnums=0)
    for i in range(4):
        state, _ = step(state, random_batch(i))
    assert len(traces) == 1 and int(state.step) == 4


def test_donated_state_is_consumed():
    state = make_state(tiny_resnet(), (12, 12, 3))
    old_kernel = state.params["head"]["kernel"]
    new_state, _ = jax.jit(train_step, donate_argnums=0)(state, random_batch(0))
    assert old_kernel.is_deleted()
    assert not new_state.params["head"]["kernel"].is_deleted()


def test_batchnorm_statistics_update_in_training_only():
    model = tiny_resnet()
    state = make_state(model, (12, 12, 3))
    batch = random_batch(1)
    new_state, _ = jax.jit(train_step)(state, batch)
    stem_mean = new_state.batch_stats["stem"]["norm"]["mean"]
    assert not np.allclose(stem_mean, state.batch_stats["stem"]["norm"]["mean"])
    # Running mean = 0.9 * old + 0.1 * batch mean of the stem convolution's output.
    conv_out = jax.lax.conv_general_dilated(
        batch["image"], state.params["stem"]["conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(stem_mean, 0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    # Evaluation reads the running statistics and changes nothing.
    counts = jax.jit(eval_step)(new_state, batch)
    logits = model.apply({"params": new_state.params, "batch_stats": new_state.batch_stats},
                         batch["image"], train=False)
    expected = cross_entropy(logits, batch["label"]).sum()
    np.testing.assert_allclose(counts["loss_sum"], expected, rtol=1e-5)


class DropoutMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = DenseBlock(32, dropout_rate=0.5)(x.reshape(x.shape[0], -1), train)
        return nn.Dense(4)(x)


def test_dropout_key_comes_from_state_and_step():
    model = DropoutMLP()
    state = make_state(model, (4, 4, 1))
    batch = random_batch(0, shape=(4, 4, 1))
    _, metrics = jax.jit(train_step)(state, batch)

    def loss(rng, train=True):
        logits = model.apply({"params": state.params}, batch["image"], train=train,
                             rngs={"dropout": rng})
        return float(cross_entropy(logits, batch["label"]).mean())

    assert float(metrics["loss"]) == pytest.approx(loss(jax.random.fold_in(state.rng, 0)), rel=1e-6)
    assert loss(jax.random.fold_in(state.rng, 1)) != pytest.approx(float(metrics["loss"]), rel=1e-3)
    assert loss(jax.random.key(1), False) == loss(jax.random.key(2), False)


def test_label_smoothing_matches_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 5)
    logp = np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    a = 0.2
    expected = -(1 - a) * logp[np.arange(5), labels] - a * logp.mean(-1)
    np.testing.assert_allclose(cross_entropy(logits, labels, a), expected, rtol=1e-5)
    soft = jax.nn.one_hot(labels, 4)
    np.testing.assert_allclose(cross_entropy(logits, soft), cross_entropy(logits, labels), rtol=1e-6)


@pytest.mark.parametrize("model_fn,shape", [
    (lambda: get_model("lenet5", num_classes=10), (32, 32, 1)),
    (lambda: tiny_resnet(10, width=16), (12, 12, 3)),
])
def test_overfits_one_small_batch(model_fn, shape):
    if shape == (32, 32, 1):
        ds = get_dataset("digits", "train")
        batch = {"image": ds.source.images[:16], "label": ds.source.labels[:16]}
    else:
        batch = random_batch(5, n=16, shape=shape, num_classes=10)
    state = create_train_state(model_fn(), optax.adam(3e-3), jax.random.key(0), shape)
    step = jax.jit(train_step, donate_argnums=0)
    for _ in range(150):
        state, metrics = step(state, batch)
    assert float(metrics["loss"]) < 0.02
    assert float(metrics["accuracy"]) == 1.0


def test_create_train_state_rejects_input_model_cannot_take():
    with pytest.raises(ValueError, match="LeNet-5 takes 32x32"):
        make_state(get_model("lenet5", num_classes=10), (28, 28, 1))
