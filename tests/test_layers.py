"""The building blocks in `cnn_jax.layers`, checked against independent NumPy references:
convolution (stride, padding, dilation, groups, depthwise), batch/layer/group norm,
pooling (max, avg with and without padded pixels counted, global, adaptive), activations,
dropout, numerical gradients, and the error messages for bad arguments."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import erf

from cnn_jax.layers import (
    ACTIVATIONS, NORMS, POOLS, ConvBlock, DenseBlock, Pool, adaptive_avg_pool, avg_pool,
    check_norm, get_activation, get_pool, global_avg_pool, global_max_pool, max_pool,
    normalize_padding)
from conftest import require

RTOL = ATOL = 1e-5


# ---------------------------------------------------------------------------------------------
# NumPy references (float64, NHWC, explicit loops over output positions)
# ---------------------------------------------------------------------------------------------

def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def same_pads(size, k, s, d=1):
    """TensorFlow/XLA 'SAME': output ceil(n/s), the extra pixel of an odd total at the end."""
    total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return (total // 2, total - total // 2)


def ref_pads(padding, hw, kernel, strides, dilation=(1, 1)):
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        return tuple(same_pads(*a) for a in zip(hw, kernel, strides, dilation))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(p) for p in padding)


def pad_nhwc(x, pads, value=0.0):
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def windows(x, kernel, strides, dilation=(1, 1)):
    """Yields (i, j, patch): the (N, kh, kw, C) window of x read by output position (i, j)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    oh, ow = (x.shape[1] - eh) // sh + 1, (x.shape[2] - ew) // sw + 1
    for i in range(oh):
        for j in range(ow):
            yield i, j, x[:, i * sh:i * sh + eh:dh, j * sw:j * sw + ew:dw, :]


def out_size(x, kernel, strides, dilation=(1, 1)):
    return tuple((n - ((k - 1) * d + 1)) // s + 1
                 for n, k, s, d in zip(x.shape[1:3], kernel, strides, dilation))


def ref_conv(x, w, b, strides, pads, dilation, groups):
    """Grouped convolution; w is HWIO with I = in_channels / groups."""
    x = pad_nhwc(np.asarray(x, np.float64), pads)
    w = np.asarray(w, np.float64)
    kh, kw, cin_g, cout = w.shape
    assert cin_g * groups == x.shape[-1]
    cout_g = cout // groups
    out = np.zeros((x.shape[0], *out_size(x, (kh, kw), strides, dilation), cout))
    for i, j, patch in windows(x, (kh, kw), strides, dilation):
        for g in range(groups):
            out[:, i, j, g * cout_g:(g + 1) * cout_g] = np.einsum(
                "nhwc,hwco->no", patch[..., g * cin_g:(g + 1) * cin_g],
                w[..., g * cout_g:(g + 1) * cout_g])
    return out if b is None else out + np.asarray(b, np.float64)


def ref_pool(x, kind, window, strides, pads, count_include_pad=True):
    x = np.asarray(x, np.float64)
    xp = pad_nhwc(x, pads, -np.inf if kind == "max" else 0.0)
    real = pad_nhwc(np.ones_like(x), pads, 0.0)
    out = np.zeros((x.shape[0], *out_size(xp, window, strides), x.shape[-1]))
    counts = {(i, j): p for i, j, p in windows(real, window, strides)}
    for i, j, patch in windows(xp, window, strides):
        if kind == "max":
            out[:, i, j] = patch.max(axis=(1, 2))
        else:
            n = window[0] * window[1] if count_include_pad else counts[i, j].sum(axis=(1, 2))
            out[:, i, j] = patch.sum(axis=(1, 2)) / n
    return out


def ref_adaptive_avg_pool(x, out_hw):
    """torch.nn.AdaptiveAvgPool2d: bin i covers floor(i*H/out) .. ceil((i+1)*H/out)."""
    x = np.asarray(x, np.float64)
    (h, w), (oh, ow) = x.shape[1:3], out_hw
    out = np.zeros((x.shape[0], oh, ow, x.shape[-1]))
    for i in range(oh):
        r0, r1 = math.floor(i * h / oh), math.ceil((i + 1) * h / oh)
        for j in range(ow):
            c0, c1 = math.floor(j * w / ow), math.ceil((j + 1) * w / ow)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def ref_normalize(x, axes, eps=1e-5):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # biased
    return (x - mean) / np.sqrt(var + eps)


REF_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "hard_swish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "hard_sigmoid": lambda x: np.clip(x + 3, 0, 6) / 6,
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "gelu": lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "none": lambda x: x,
}


def random_variables(module, x, seed=1):
    """The module's variables with random values (biases and running means nonzero, scales and
    running variances positive). Shapes come from `jax.eval_shape`, so nothing is compiled for
    the initialisers and the values do not depend on them."""
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        value = 0.5 * rng.standard_normal(leaf.shape)
        if path[-1].key in ("scale", "var"):
            value = np.abs(value) + 0.5
        return value.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grouping", ["groups1", "groups2", "depthwise"])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("padding", ["VALID", "SAME", 1, ((1, 2), (0, 1))], ids=str)
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_matches_numpy(stride, padding, dilation, grouping):
    x = rand((2, 7, 9, 4))
    kernel = (3, 2)  # odd and even: 'SAME' pads asymmetrically along the width
    groups = {"groups1": 1, "groups2": 2, "depthwise": 4}[grouping]
    features = 8 if grouping == "depthwise" else 6
    block = ConvBlock(features, kernel_size=kernel, strides=stride, padding=padding,
                      dilation=dilation, groups=1 if grouping == "depthwise" else groups,
                      depthwise=grouping == "depthwise", norm="none", act="none")
    variables = random_variables(block, x)
    w, b = variables["params"]["conv"]["kernel"], variables["params"]["conv"]["bias"]
    assert w.shape == (*kernel, 4 // groups, features)  # HWIO, I = in_channels / groups
    assert b.shape == (features,)

    y = np.asarray(block.apply(variables, x))
    pads = ref_pads(padding, x.shape[1:3], kernel, (stride, stride), (dilation, dilation))
    expected = ref_conv(x, w, b, (stride, stride), pads, (dilation, dilation), groups)
    assert y.shape == expected.shape
    if padding == "SAME":
        assert y.shape[1:3] == (-(-7 // stride), -(-9 // stride))
    np.testing.assert_allclose(y, expected, rtol=RTOL, atol=ATOL)


def test_conv_rectangular_strides_and_dilation():
    x = rand((1, 9, 8, 3))
    block = ConvBlock(5, kernel_size=(2, 3), strides=(1, 2), dilation=(2, 1), padding="SAME",
                      act="none")
    variables = random_variables(block, x)
    p = variables["params"]["conv"]
    pads = ref_pads("SAME", (9, 8), (2, 3), (1, 2), (2, 1))
    expected = ref_conv(x, p["kernel"], p["bias"], (1, 2), pads, (2, 1), 1)
    np.testing.assert_allclose(block.apply(variables, x), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "gelu", "sigmoid"])
def test_conv_block_applies_activation_after_conv(act):
    x = rand((2, 5, 5, 3))
    block = ConvBlock(4, act=act)
    variables = random_variables(block, x)
    p = variables["params"]["conv"]
    conv = ref_conv(x, p["kernel"], p["bias"], (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    np.testing.assert_allclose(block.apply(variables, x), REF_ACTIVATIONS[act](conv),
                               rtol=RTOL, atol=ATOL)


def test_conv_bias_default_follows_norm():
    x = rand((1, 4, 4, 2))
    for norm in NORMS:
        params = random_variables(ConvBlock(3, norm=norm), x)["params"]
        assert ("bias" in params["conv"]) == (norm == "none"), norm
    conv_params = lambda block: random_variables(block, x)["params"]["conv"]  # noqa: E731
    assert "bias" in conv_params(ConvBlock(3, norm="batch", use_bias=True))
    assert "bias" not in conv_params(ConvBlock(3, use_bias=False))


def test_batch_norm_train_and_eval():
    x = rand((3, 6, 5, 2)) * 2 + 1
    block = ConvBlock(4, kernel_size=3, padding="SAME", norm="batch", act="none")
    variables = random_variables(block, x)
    params, stats = variables["params"], variables["batch_stats"]
    assert "bias" not in params["conv"]
    scale, shift = params["norm"]["scale"], params["norm"]["bias"]
    init_mean, init_var = stats["norm"]["mean"], stats["norm"]["var"]

    conv = ref_conv(x, params["conv"]["kernel"], None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    batch_mean, batch_var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))

    apply = jax.jit(block.apply, static_argnames=("train", "mutable"))  # one compile, not dozens

    # Train: normalised with the batch's own statistics; running averages updated.
    y, updates = apply({"params": params, "batch_stats": stats}, x, train=True,
                       mutable="batch_stats")
    np.testing.assert_allclose(y, ref_normalize(conv, (0, 1, 2)) * scale + shift,
                               rtol=RTOL, atol=ATOL)
    new = updates["batch_stats"]["norm"]
    np.testing.assert_allclose(new["mean"], 0.9 * init_mean + 0.1 * batch_mean,
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(new["var"], 0.9 * init_var + 0.1 * batch_var,
                               rtol=RTOL, atol=ATOL)

    # Eval: the running averages, not the batch, and they stay as they are.
    y_eval, after = apply({"params": params, "batch_stats": updates["batch_stats"]}, x,
                          train=False, mutable="batch_stats")
    expected = (conv - new["mean"]) / np.sqrt(np.asarray(new["var"], np.float64) + 1e-5)
    np.testing.assert_allclose(y_eval, expected * scale + shift, rtol=RTOL, atol=ATOL)
    assert not np.allclose(y_eval, y, atol=1e-2)
    jax.tree.map(np.testing.assert_array_equal, after, updates)


@pytest.mark.parametrize("norm,features,group_size", [("layer", 4, None), ("group", 6, 3),
                                                      ("group", 64, 2)])
def test_layer_and_group_norm_match_numpy(norm, features, group_size):
    x = rand((2, 4, 5, 3)) * 3 + 2
    block = ConvBlock(features, norm=norm, act="tanh")  # conv -> norm -> activation
    variables = random_variables(block, x)
    params = variables["params"]
    scale, shift = params["norm"]["scale"], params["norm"]["bias"]
    conv = ref_conv(x, params["conv"]["kernel"], None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    if norm == "layer":  # over the channels at each position
        expected = ref_normalize(conv, (3,))
    else:  # gcd(32, features) groups of channels, each over (H, W, channels in the group)
        assert features // math.gcd(32, features) == group_size
        grouped = conv.reshape(*conv.shape[:3], -1, group_size)
        expected = ref_normalize(grouped, (1, 2, 4)).reshape(conv.shape)
    np.testing.assert_allclose(jax.jit(block.apply)(variables, x),
                               np.tanh(expected * scale + shift), rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------

POOL_CASES = [(w, s, p) for w in (2, 3) for s in (1, 2, 3) for p in ("VALID", "SAME", 1)]


@pytest.mark.parametrize("window,stride,padding", POOL_CASES, ids=str)
def test_max_pool_matches_numpy(window, stride, padding):
    x = rand((2, 7, 8, 3))
    y = max_pool(x, window, stride, padding)
    pads = ref_pads(padding, (7, 8), (window, window), (stride, stride))
    expected = ref_pool(x, "max", (window, window), (stride, stride), pads)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("window,stride,padding", POOL_CASES, ids=str)
def test_avg_pool_matches_numpy(window, stride, padding, count_include_pad):
    x = rand((2, 7, 8, 3))
    y = avg_pool(x, window, stride, padding, count_include_pad=count_include_pad)
    pads = ref_pads(padding, (7, 8), (window, window), (stride, stride))
    expected = ref_pool(x, "avg", (window, window), (stride, stride), pads, count_include_pad)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=RTOL, atol=ATOL)


def test_avg_pool_count_include_pad_corner_value():
    """A 3x3 window at the corner with padding 1 sees 4 real pixels of value 1."""
    x = np.ones((1, 4, 4, 1), np.float32)
    assert float(avg_pool(x, 3, 1, 1, count_include_pad=True)[0, 0, 0, 0]) == pytest.approx(4 / 9)
    assert float(avg_pool(x, 3, 1, 1, count_include_pad=False)[0, 0, 0, 0]) == pytest.approx(1.0)


def test_pool_default_stride_is_window_and_rectangular_window():
    x = rand((1, 6, 9, 2))
    np.testing.assert_allclose(max_pool(x, (2, 3)), max_pool(x, (2, 3), (2, 3)))
    expected = ref_pool(x, "avg", (2, 3), (2, 3), ((0, 0), (0, 0)))
    np.testing.assert_allclose(avg_pool(x, (2, 3)), expected, rtol=RTOL, atol=ATOL)
    assert max_pool(x, (2, 3)).shape == (1, 3, 3, 2)


@pytest.mark.parametrize("padding", [1, "SAME", ((1, 0), (2, 1))], ids=str)
def test_max_pool_padding_never_wins(padding):
    x = -(np.abs(rand((1, 5, 6, 2))) + 1.0)  # every value <= -1
    y = np.asarray(max_pool(x, 3, 2, padding))
    assert np.all(y <= -1.0)
    pads = ref_pads(padding, (5, 6), (3, 3), (2, 2))
    np.testing.assert_allclose(y, ref_pool(x, "max", (3, 3), (2, 2), pads), rtol=RTOL, atol=ATOL)


def test_global_pools():
    x = rand((3, 5, 4, 6))
    np.testing.assert_allclose(global_avg_pool(x), x.astype(np.float64).mean(axis=(1, 2)),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(global_max_pool(x), x.max(axis=(1, 2)))
    assert global_avg_pool(x).shape == (3, 6)


@pytest.mark.parametrize("in_hw,out_hw", [((7, 7), (3, 3)), ((5, 5), (7, 7)), ((1, 1), (7, 7)),
                                          ((6, 6), (6, 6)), ((8, 8), (4, 4)), ((7, 9), (3, 4)),
                                          ((9, 8), (4, 4)), ((8, 6), (2, 3)), ((13, 13), (6, 6))],
                         ids=str)
def test_adaptive_avg_pool_matches_torch_rule(in_hw, out_hw):
    x = rand((2, *in_hw, 3))
    y = adaptive_avg_pool(x, out_hw)
    assert y.shape == (2, *out_hw, 3)
    np.testing.assert_allclose(y, ref_adaptive_avg_pool(x, out_hw), rtol=RTOL, atol=ATOL)
    if out_hw[0] == out_hw[1]:
        np.testing.assert_allclose(adaptive_avg_pool(x, out_hw[0]), y)


def test_adaptive_avg_pool_against_torch():
    torch = require("torch")
    for in_hw, out_hw in [((7, 7), (3, 3)), ((5, 5), (7, 7)), ((7, 9), (3, 4)), ((8, 8), (4, 4))]:
        x = rand((2, *in_hw, 3))
        expected = torch.nn.functional.adaptive_avg_pool2d(
            torch.from_numpy(x).permute(0, 3, 1, 2), out_hw).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(adaptive_avg_pool(x, out_hw), expected, rtol=RTOL, atol=ATOL)


def test_pools_against_torch():
    torch = require("torch")
    F = torch.nn.functional
    x = rand((2, 7, 8, 3))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
    for window, stride, pad in [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 1)]:
        np.testing.assert_allclose(max_pool(x, window, stride, pad),
                                   nhwc(F.max_pool2d(xt, window, stride, pad)), rtol=RTOL,
                                   atol=ATOL)
        for cip in (True, False):
            np.testing.assert_allclose(
                avg_pool(x, window, stride, pad, count_include_pad=cip),
                nhwc(F.avg_pool2d(xt, window, stride, pad, count_include_pad=cip)),
                rtol=RTOL, atol=ATOL)


def test_pool_module_dispatches():
    x = rand((2, 6, 6, 3))
    variables = {}
    np.testing.assert_array_equal(Pool("max", 3, 2, 1).apply(variables, x), max_pool(x, 3, 2, 1))
    np.testing.assert_array_equal(Pool("avg", 2).apply(variables, x), avg_pool(x, 2))
    np.testing.assert_array_equal(Pool("global_avg").apply(variables, x), global_avg_pool(x))
    np.testing.assert_array_equal(Pool("global_max").apply(variables, x), global_max_pool(x))
    assert get_pool("max") is max_pool and get_pool("avg") is avg_pool
    assert set(POOLS) == {"max", "avg"}


# ---------------------------------------------------------------------------------------------
# Numerical gradients (float64)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(features=6, strides=2, groups=2, padding="SAME", act="gelu", norm="layer"),
    dict(features=8, dilation=2, depthwise=True, padding=1, act="tanh", norm="group"),
], ids=lambda k: k["norm"])
def test_conv_block_gradients(x64, kwargs):
    x = jnp.asarray(rand((2, 5, 6, 4)), jnp.float64)
    block = ConvBlock(kernel_size=3, dtype=jnp.float64, param_dtype=jnp.float64, **kwargs)
    params = random_variables(block, x)["params"]
    f = jax.jit(lambda x, params: block.apply({"params": params}, x))
    check_grads(f, (x, params), order=1, modes=["fwd", "rev"])


def test_conv_block_batch_norm_train_gradients(x64):
    x = jnp.asarray(rand((3, 4, 4, 2)), jnp.float64)
    block = ConvBlock(3, norm="batch", act="tanh", dtype=jnp.float64, param_dtype=jnp.float64)
    variables = random_variables(block, x)

    def f(x, params):
        y, _ = block.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                           train=True, mutable=["batch_stats"])
        return y

    check_grads(jax.jit(f), (x, variables["params"]), order=1, modes=["fwd", "rev"])


def test_dense_block_gradients(x64):
    x = jnp.asarray(rand((3, 5)), jnp.float64)
    block = DenseBlock(4, act="silu", dropout_rate=0.5, dtype=jnp.float64,
                       param_dtype=jnp.float64)
    params = random_variables(block, x)["params"]
    f = jax.jit(lambda x, params: block.apply({"params": params}, x, train=False))
    check_grads(f, (x, params), order=1, modes=["fwd", "rev"])


@pytest.mark.parametrize("padding,cip", [(1, False), ("SAME", True)], ids=str)
def test_avg_pool_gradients(x64, padding, cip):
    x = jnp.asarray(rand((2, 5, 6, 2)), jnp.float64)
    # avg_pool is linear, so first order says it all.
    check_grads(jax.jit(lambda x: avg_pool(x, 3, 2, padding, count_include_pad=cip)), (x,),
                order=1, modes=["fwd", "rev"])


@pytest.mark.parametrize("in_hw,out_hw", [((7, 7), (3, 3)), ((3, 5), (4, 2))], ids=str)
def test_adaptive_avg_pool_gradients(x64, in_hw, out_hw):
    x = jnp.asarray(rand((2, *in_hw, 2)), jnp.float64)
    check_grads(jax.jit(lambda x: adaptive_avg_pool(x, out_hw)), (x,), order=1,
                modes=["fwd", "rev"])


def test_max_pool_gradients(x64):
    # Distinct values 0.1 apart: no ties, and the finite-difference step never changes a winner.
    shape = (2, 6, 5, 2)
    values = np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape) * 0.1 - 3.0
    x = jnp.asarray(values, jnp.float64)
    f = lambda x: max_pool(x, 3, 2, padding=1)  # noqa: E731
    check_grads(jax.jit(f), (x,), order=1, modes=["fwd", "rev"])
    # Each window's gradient goes to its maximum only.
    g = np.asarray(jax.grad(lambda x: f(x).sum())(x))
    assert g.sum() == pytest.approx(np.prod(f(x).shape))
    assert set(np.unique(g)) <= set(range(10))


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------

def test_activation_registry_is_covered():
    assert set(ACTIVATIONS) == set(REF_ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(REF_ACTIVATIONS))
def test_activation_matches_formula(name):
    x = np.concatenate([np.linspace(-6, 6, 61), [0.0, 1e-3, -1e-3]]).astype(np.float32)
    expected = REF_ACTIVATIONS[name](x.astype(np.float64))
    np.testing.assert_allclose(get_activation(name)(jnp.asarray(x)), expected, rtol=RTOL,
                               atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def assert_names_choices(excinfo, bad, choices):
    message = str(excinfo.value)
    assert repr(bad) in message, message
    for choice in choices:
        assert choice in message, (choice, message)


def test_unknown_activation():
    with pytest.raises(ValueError) as excinfo:
        get_activation("swish")
    assert_names_choices(excinfo, "swish", ACTIVATIONS)
    x = rand((1, 4, 4, 2))
    with pytest.raises(ValueError, match="swish"):
        ConvBlock(3, act="swish").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="swish"):
        DenseBlock(3, act="swish").init(jax.random.key(0), x[:, 0, 0])


def test_unknown_norm():
    with pytest.raises(ValueError) as excinfo:
        check_norm("instance")
    assert_names_choices(excinfo, "instance", NORMS)
    with pytest.raises(ValueError) as excinfo:
        ConvBlock(3, norm="instance").init(jax.random.key(0), rand((1, 4, 4, 2)))
    assert_names_choices(excinfo, "instance", NORMS)


def test_unknown_pool():
    with pytest.raises(ValueError) as excinfo:
        get_pool("min")
    assert_names_choices(excinfo, "min", POOLS)
    with pytest.raises(ValueError) as excinfo:
        Pool("min").apply({}, rand((1, 4, 4, 2)))
    assert_names_choices(excinfo, "min", ["max", "avg", "global_avg", "global_max"])


def test_padding_forms():
    assert normalize_padding("same") == "SAME"
    assert normalize_padding("Valid") == "VALID"
    assert normalize_padding(2) == ((2, 2), (2, 2))
    assert normalize_padding((1, 3)) == ((1, 1), (3, 3))
    assert normalize_padding([[1, 2], [0, 3]]) == ((1, 2), (0, 3))


def test_unknown_padding():
    with pytest.raises(ValueError) as excinfo:
        normalize_padding("FULL")
    assert_names_choices(excinfo, "FULL", ["SAME", "VALID"])
    with pytest.raises(ValueError, match="FULL"):
        ConvBlock(3, padding="FULL").init(jax.random.key(0), rand((1, 4, 4, 2)))
    with pytest.raises(ValueError, match="causal"):
        max_pool(rand((1, 4, 4, 2)), 2, padding="causal")
    for bad in (-1, (1, 2, 3), ((1, 2), (3,)), ((1, -1), (0, 0))):
        with pytest.raises(ValueError, match="Padding must be"):
            normalize_padding(bad)


@pytest.mark.parametrize("fn", [
    lambda x: ConvBlock(3).init(jax.random.key(0), x),
    lambda x: max_pool(x), lambda x: avg_pool(x), lambda x: global_avg_pool(x),
    lambda x: global_max_pool(x), lambda x: adaptive_avg_pool(x, 2),
], ids=["ConvBlock", "max_pool", "avg_pool", "global_avg_pool", "global_max_pool",
        "adaptive_avg_pool"])
def test_rank3_input_rejected(fn):
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        fn(rand((8, 8, 3)))


def test_input_too_small():
    x = rand((1, 3, 3, 2))
    with pytest.raises(ValueError, match="too small"):
        ConvBlock(4, kernel_size=5, padding="VALID").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="too small"):  # dilation 2 makes a 3x3 kernel span 5
        ConvBlock(4, kernel_size=3, dilation=2, padding="VALID").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="too small"):
        max_pool(x, 4)
    # Padding that makes it fit, or 'SAME', is fine.
    assert jax.eval_shape(ConvBlock(4, kernel_size=5, padding=1).init, jax.random.key(0), x)
    block = ConvBlock(4, kernel_size=5, padding="SAME")
    assert block.apply(random_variables(block, x), x).shape == (1, 3, 3, 4)


@pytest.mark.parametrize("channels,features,kwargs", [
    (6, 4, dict(groups=3)),  # divides the channels, not the features
    (5, 4, dict(groups=2)),  # divides the features, not the channels
    (4, 6, dict(depthwise=True)),  # depthwise: features must be a multiple of the channels
])
def test_groups_must_divide(channels, features, kwargs):
    with pytest.raises(ValueError, match="groups"):
        ConvBlock(features, **kwargs).init(jax.random.key(0), rand((1, 5, 5, channels)))


# ---------------------------------------------------------------------------------------------
# DenseBlock and dropout
# ---------------------------------------------------------------------------------------------

def test_dense_block_eval_is_deterministic_affine_plus_act():
    x = rand((4, 6))
    block = DenseBlock(16, act="gelu", dropout_rate=0.5)
    variables = random_variables(block, x)
    p = variables["params"]["dense"]
    expected = REF_ACTIVATIONS["gelu"](x.astype(np.float64) @ p["kernel"] + p["bias"])
    y1 = block.apply(variables, x)
    y2 = block.apply(variables, x, train=False, rngs={"dropout": jax.random.key(5)})
    np.testing.assert_allclose(y1, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(y1, y2)


def test_dense_block_dropout_only_in_train():
    x = rand((4, 64))
    rate = 0.5
    block = DenseBlock(64, act="none", dropout_rate=rate)
    variables = random_variables(block, x)
    clean = np.asarray(block.apply(variables, x))
    assert np.all(clean != 0)

    a = np.asarray(block.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)}))
    b = np.asarray(block.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)}))
    kept = a != 0
    assert 0.3 < kept.mean() < 0.7  # 256 units, rate 0.5
    # Kept units are rescaled by 1 / (1 - rate); dropped ones are exactly zero.
    np.testing.assert_allclose(a[kept], clean[kept] / (1 - rate), rtol=RTOL, atol=ATOL)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, clean)


def test_dense_block_without_dropout_ignores_train():
    x = rand((2, 5))
    block = DenseBlock(3, act="relu")
    variables = random_variables(block, x)
    np.testing.assert_array_equal(block.apply(variables, x, train=True), block.apply(variables, x))
