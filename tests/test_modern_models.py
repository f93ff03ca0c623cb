"""The modern families (MobileNetV2/V3, EfficientNet, RegNetY, ConvNeXt, DenseNet) and the blocks
they add to `cnn_jax.layers`: parameter counts against torchvision 0.29.1's (by shapes alone,
`jax.eval_shape`), the blocks against NumPy, and, where torchvision is installed, torchvision's
own modules with random weights and BatchNorm statistics imported into cnn_jax (same logits
within 1e-4 relative in eval mode) and exported back (loaded by torchvision strictly)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from cnn_jax.layers import SqueezeExcitation, StochasticDepth, layer_scale
from cnn_jax.models import get_model, input_shape
from cnn_jax.models.blocks import make_divisible
from cnn_jax.models.regnet import regnet_stages

# torchvision 0.29.1, default constructors, 1000 classes (`sum(p.numel() for p in m.parameters())`).
TORCHVISION_PARAMS = {
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "regnet_y_400mf": 4_344_144,
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "densenet121": 7_978_856,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
}


def param_count(name, num_classes=1000):
    model = get_model(name, num_classes=num_classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, *input_shape(name)))))
    return sum(x.size for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_equals_torchvision(name):
    assert param_count(name) == TORCHVISION_PARAMS[name]


def test_cifar_variants_take_32x32_and_give_logits():
    for name in ("mobilenet_v2_cifar", "convnext_tiny_cifar"):
        model = get_model(name, num_classes=10)
        out = jax.eval_shape(lambda: model.init_with_output(
            jax.random.key(0), jnp.zeros((2, 32, 32, 3)))[0])
        assert out.shape == (2, 10) and input_shape(name) == (32, 32, 3)


MODERN_BACKBONES = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
                    "regnet_y_400mf", "convnext_tiny", "densenet121", "resnext50_32x4d",
                    "wide_resnet50_2"]


@pytest.mark.parametrize("name", MODERN_BACKBONES)
def test_multi_scale_features(name):
    """`get_backbone(name)` gives the maps at strides 4, 8, 16, 32 of a 64x64 image, and its
    parameters are the classifier's without the head (so classifier weights initialize it)."""
    from cnn_jax.models.backbones import get_backbone
    x = jnp.zeros((1, 64, 64, 3))
    backbone = get_backbone(name)
    variables = jax.eval_shape(backbone.init, jax.random.key(0), x)
    maps = jax.eval_shape(backbone.apply, variables, x)
    assert sorted(maps) == [4, 8, 16, 32]
    for stride, fmap in maps.items():
        assert fmap.shape[1:3] == (64 // stride, 64 // stride), (stride, fmap.shape)
    classifier = get_model(name, num_classes=10)
    full = jax.eval_shape(classifier.init, jax.random.key(0), x)
    flat = lambda tree: {k: v.shape for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
    backbone_arrays, classifier_arrays = flat(variables), flat(full)
    assert set(backbone_arrays) <= set(classifier_arrays)
    missing = {jax.tree_util.keystr(k) for k in set(classifier_arrays) - set(backbone_arrays)}
    assert missing and all("head" in k or "classifier" in k for k in missing), missing
    with pytest.raises(ValueError, match="valid strides"):
        jax.eval_shape(get_backbone(name, out_strides=(64,)).init, jax.random.key(0), x)


# ---- blocks --------------------------------------------------------------------------------

def test_make_divisible_matches_the_tf_rule():
    # Values checked by hand against torchvision.models._utils._make_divisible.
    assert [make_divisible(v) for v in (16, 17.6, 35.2, 3, 12, 100.8)] == [16, 16, 32, 8, 16, 104]


def test_squeeze_excitation_against_numpy():
    x = np.random.RandomState(0).randn(2, 5, 4, 12).astype(np.float32)
    se = SqueezeExcitation(3, act="relu", gate="hard_sigmoid")
    variables = se.init(jax.random.key(1), x)
    p = variables["params"]
    w1, b1 = np.asarray(p["fc1"]["kernel"])[0, 0], np.asarray(p["fc1"]["bias"])
    w2, b2 = np.asarray(p["fc2"]["kernel"])[0, 0], np.asarray(p["fc2"]["bias"])
    s = np.maximum(x.mean(axis=(1, 2)) @ w1 + b1, 0) @ w2 + b2
    expected = x * (np.clip(s + 3, 0, 6) / 6)[:, None, None, :]
    np.testing.assert_allclose(se.apply(variables, x), expected, rtol=1e-5, atol=1e-6)
    assert p["fc1"]["kernel"].shape == (1, 1, 12, 3)


def test_stochastic_depth_drops_whole_examples_and_rescales():
    x = jnp.ones((4000, 3, 2, 5))
    layer = StochasticDepth(0.25)
    assert layer.apply({}, x, train=False) is x
    y = np.asarray(layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)}))
    per_example = y.reshape(len(y), -1)
    # Each example is all zeros or all 1 / 0.75: the draw is per example ("row" mode).
    assert set(np.unique(per_example.min(1)) ) <= {0.0, np.float32(1 / 0.75)}
    assert np.all(per_example.min(1) == per_example.max(1))
    kept = np.mean(per_example[:, 0] > 0)
    assert abs(kept - 0.75) < 0.03   # 4000 draws: 3 standard deviations is 0.021
    np.testing.assert_allclose(y.mean(), 1.0, atol=0.04)  # unbiased in expectation
    # The same key gives the same mask; another key another one.
    again = layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
    other = layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert np.array_equal(y, again) and not np.array_equal(y, other)
    with pytest.raises(ValueError, match="rate must be in"):
        StochasticDepth(1.5).apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})


def test_layer_scale_is_a_learned_per_channel_scale():
    class Scaled(nn.Module):
        @nn.compact
        def __call__(self, x):
            return layer_scale(self, x, 1e-6)

    x = np.random.RandomState(0).randn(2, 3, 3, 7).astype(np.float32)
    variables = Scaled().init(jax.random.key(0), x)
    np.testing.assert_array_equal(variables["params"]["layer_scale"], np.full(7, 1e-6, np.float32))
    scale = np.arange(7, dtype=np.float32)
    out = Scaled().apply({"params": {"layer_scale": scale}}, x)
    np.testing.assert_allclose(out, x * scale, rtol=1e-6)


def test_regnet_stages_follow_the_paper_rule():
    # RegNetY-400MF (w_0=48, w_a=27.89, w_m=2.09, depth 16, group width 8): torchvision's
    # BlockParams gives these widths and depths.
    assert regnet_stages(16, 48, 27.89, 2.09, 8) == ((48, 1, 8), (104, 3, 8), (208, 6, 8),
                                                      (440, 6, 8))


def test_stochastic_depth_is_active_in_training_only():
    from cnn_jax.models.convnext import ConvNeXt
    model = ConvNeXt(widths=(8, 16), depths=(2, 1), stochastic_depth_rate=0.9, stem_patch=2,
                     num_classes=3)
    x = jnp.asarray(np.random.RandomState(0).rand(4, 8, 8, 3), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    variables = jax.tree.map(lambda v: v + 0.5, variables)  # layer scales away from 1e-6
    apply = jax.jit(model.apply, static_argnames="train")
    evals = [apply(variables, x, train=False) for _ in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])
    trains = [apply(variables, x, train=True, rngs={"dropout": jax.random.key(k)})
              for k in (0, 1)]
    assert not np.allclose(trains[0], trains[1])
    assert get_model("convnext_base", num_classes=2).stochastic_depth_rate == 0.5
    assert get_model("convnext_base", num_classes=2,
                     stochastic_depth_rate=0.2).stochastic_depth_rate == 0.2


@pytest.mark.parametrize("kernel,strides,padding,dilation", [
    (3, 1, "SAME", 1), (3, 2, ((1, 1), (1, 1)), 1), (5, 2, ((2, 1), (0, 2)), 1),
    (3, 1, "VALID", 2), (5, 1, "SAME", 1)])
def test_depthwise_convolution_as_shifted_slices(kernel, strides, padding, dilation):
    """`ops.conv_general_dilated` computes depthwise 3x3/5x5 convolutions as shifted slices:
    the same outputs and gradients as XLA's grouped convolution."""
    from jax import lax
    from cnn_jax import ops
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(2, 11, 9, 6), jnp.float32)
    w = jnp.asarray(rng.randn(kernel, kernel, 1, 6), jnp.float32)
    args = ((strides, strides), padding)
    kwargs = dict(rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                  feature_group_count=6)

    def loss(conv, x, w):
        y = conv(x, w, *args, **kwargs)
        return jnp.sum(y * jnp.cos(y)), y

    (_, fast), fast_grads = jax.value_and_grad(functools.partial(loss, ops.conv_general_dilated),
                                               argnums=(0, 1), has_aux=True)(x, w)
    (_, plain), plain_grads = jax.value_and_grad(functools.partial(loss, lax.conv_general_dilated),
                                                 argnums=(0, 1), has_aux=True)(x, w)
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_grads, plain_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # The shifted form is what runs: its jaxpr has no convolution at all.
    jaxpr = str(jax.make_jaxpr(lambda x, w: ops.conv_general_dilated(x, w, *args, **kwargs))(x, w))
    assert "conv_general_dilated" not in jaxpr


def test_depthwise_7x7_stays_a_grouped_convolution():
    from cnn_jax import ops
    x, w = jnp.zeros((1, 8, 8, 4)), jnp.zeros((7, 7, 1, 4))
    jaxpr = str(jax.make_jaxpr(lambda x, w: ops.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=4))(x, w))
    assert "conv_general_dilated" in jaxpr


# ---- torchvision parity --------------------------------------------------------------------

FAST = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
        "regnet_y_400mf", "convnext_tiny"]
SLOW = ["resnext50_32x4d", "wide_resnet50_2", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "convnext_small",
        "convnext_base", "densenet121"]


def randomized_torchvision(name, seed=0):
    """torchvision's model `name` in eval mode with random weights, BatchNorm statistics and
    layer scales (their defaults, ones/zeros/1e-6, would hide layout errors)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.dtype.is_floating_point:
                continue
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=g) + 0.5)
            elif key.endswith(("running_mean", "bias")):
                value.copy_(torch.randn(value.shape, generator=g) * 0.1)
            elif key.endswith("layer_scale") or (key.endswith("weight") and value.ndim == 1):
                value.copy_(torch.rand(value.shape, generator=g) * 0.5 + 0.75)
    return model


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_torchvision_parity_import_and_strict_export(name, tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from cnn_jax.transfer.torchvision import export_torchvision, import_torchvision

    reference = randomized_torchvision(name)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    model, variables, report = import_torchvision(state, name)
    assert not report.reinitialized
    x = np.random.RandomState(0).rand(2, 48, 48, 3).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    apply = jax.jit(functools.partial(model.apply, train=False))
    out = np.asarray(apply(variables, x))
    assert np.abs(out - expected).max() <= 1e-4 * np.abs(expected).max()

    path = tmp_path / f"{name}.safetensors"
    export_torchvision(str(path), variables, name)
    from safetensors.torch import load_file
    fresh = getattr(torchvision.models, name)(weights=None).eval()
    fresh.load_state_dict(load_file(str(path)), strict=True)
    with torch.no_grad():
        again = fresh(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_array_equal(again, expected)
