"""Building blocks every architecture is composed of.

- `ConvBlock`: convolution -> optional norm -> activation.
- `DenseBlock`: dense -> activation -> dropout.
- `SqueezeExcitation`, `StochasticDepth` (drop path), `layer_scale`: the pieces of the
  modern families (MobileNet, EfficientNet, RegNet, ConvNeXt); depthwise and grouped
  convolutions are `ConvBlock(groups=...)` / `ConvBlock(depthwise=True)`.
- `conv`: the plain convolution every block uses (fast CPU gradients through `cnn_jax.ops`).
- `ConvTranspose`: PyTorch's transposed convolution (`ConvTranspose2d`), U-Net's up-sampling.
- `resize_bilinear`: PyTorch's `F.interpolate(mode='bilinear', align_corners=False)`.
- Pooling: `max_pool`, `avg_pool`, `global_avg_pool`, `global_max_pool`,
  `adaptive_avg_pool` (pure functions) and the `Pool` module wrapping them.
- Registries by name: `ACTIVATIONS`, `NORMS`, `POOLS`.

All tensors are NHWC. Padding is 'SAME', 'VALID', an int (same on every side),
a pair (rows, cols), or explicit ((top, bottom), (left, right)).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax import ops

Padding = Union[str, int, Sequence[int], Sequence[Sequence[int]]]
IntOrPair = Union[int, Sequence[int]]


def _identity(x):
    return x


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "hard_swish": nn.hard_swish,      # x * relu6(x + 3) / 6, as torch.nn.Hardswish
    "hard_sigmoid": nn.hard_sigmoid,  # relu6(x + 3) / 6, as torch.nn.Hardsigmoid
    "leaky_relu": nn.leaky_relu,  # negative slope 0.01, as torch.nn.LeakyReLU
    "elu": nn.elu,
    "gelu": functools.partial(nn.gelu, approximate=False),  # exact, as torch.nn.GELU
    "silu": nn.silu,
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "none": _identity,
}

NORMS = ("batch", "layer", "group", "none")


def _unknown(kind: str, name: Any, choices) -> ValueError:
    return ValueError(f"Unknown {kind} {name!r}. Valid choices: {', '.join(sorted(choices))}.")


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise _unknown("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]


def check_norm(name: str) -> str:
    if name not in NORMS:
        raise _unknown("norm", name, NORMS)
    return name


def make_norm(name: str, *, train: bool, features: int, dtype: Any, param_dtype: Any,
              scale_init: Callable = nn.initializers.ones, module_name: str = "norm",
              axis_name: str | None = None, epsilon: float = 1e-5, momentum: float = 0.1):
    """Returns the norm layer for `name` ('none' gives None).

    BatchNorm uses PyTorch's defaults (momentum 0.1 in PyTorch's convention, epsilon 1e-5;
    `momentum` and `epsilon` change them, momentum always in PyTorch's convention: the weight
    of the new batch) so that imported torchvision statistics mean the same thing. 'layer' normalises over
    channels at each position (the ConvNeXt convention); 'group' uses up to 32 groups.
    `axis_name`: BatchNorm averages its batch statistics over that mapped axis (`jax.pmap`),
    so that every device normalises with the global batch's statistics.
    """
    check_norm(name)
    common = dict(dtype=dtype, param_dtype=param_dtype, scale_init=scale_init, name=module_name)
    if name == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=1.0 - momentum, epsilon=epsilon,
                            axis_name=axis_name if train else None, **common)
    if name == "layer":
        return nn.LayerNorm(epsilon=epsilon, **common)
    if name == "group":
        return nn.GroupNorm(num_groups=math.gcd(32, features), epsilon=epsilon, **common)
    return None


def _pair(value: IntOrPair, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive int or a pair of positive ints, got {value!r}.")
    return pair


def normalize_padding(padding: Padding) -> Union[str, tuple[tuple[int, int], tuple[int, int]]]:
    """'SAME'/'VALID' (any case), or ((top, bottom), (left, right)) from any accepted form."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"Unknown padding {padding!r}. Valid choices: 'SAME', 'VALID', "
                             "an int, (rows, cols) or ((top, bottom), (left, right)).")
        return padding.upper()
    if isinstance(padding, int):
        padding = (padding, padding)
    padding = tuple(padding)
    if len(padding) == 2 and all(isinstance(p, int) for p in padding):
        padding = ((padding[0], padding[0]), (padding[1], padding[1]))
    if (len(padding) != 2 or not all(len(p) == 2 for p in padding)
            or not all(isinstance(v, int) and v >= 0 for p in padding for v in p)):
        raise ValueError(f"Padding must be 'SAME', 'VALID', a non-negative int, (rows, cols) or "
                         f"((top, bottom), (left, right)); got {padding!r}.")
    return tuple(tuple(p) for p in padding)


def check_nhwc(x: jax.Array, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what} takes a batch of images shaped (N, H, W, C); got an array of "
                         f"rank {x.ndim} with shape {tuple(x.shape)}.")


def _check_window_fits(x, window, dilation, padding, what):
    """Shape check at trace time: a window larger than the (padded) input is a clear error."""
    if padding == "SAME":
        return
    pads = ((0, 0), (0, 0)) if padding == "VALID" else padding
    for size, k, d, (lo, hi), axis in zip(x.shape[1:3], window, dilation, pads, ("height", "width")):
        extent = (k - 1) * d + 1
        if size + lo + hi < extent:
            raise ValueError(
                f"{what}: input {axis} {size} (padded to {size + lo + hi}) is smaller than the "
                f"{extent}-pixel window; the input {tuple(x.shape[1:3])} is too small for this "
                "model. Use larger images or 'SAME' padding.")


def conv(features: int, kernel_size: IntOrPair = 3, strides: IntOrPair = 1,
         padding: Padding = "SAME", *, dilation: IntOrPair = 1, groups: int = 1,
         use_bias: bool = True, kernel_init: Callable = nn.linear.default_kernel_init,
         dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, name: str | None = None
         ) -> nn.Conv:
    """A plain 2-D convolution (no norm, no activation), computed by `ops.conv_general_dilated`
    (fast CPU gradients). `groups` > 1 makes it grouped; groups = input channels, depthwise."""
    return nn.Conv(features, _pair(kernel_size, "kernel_size"),
                   strides=_pair(strides, "strides"), padding=normalize_padding(padding),
                   kernel_dilation=_pair(dilation, "dilation"), feature_group_count=groups,
                   use_bias=use_bias, kernel_init=kernel_init, dtype=dtype,
                   param_dtype=param_dtype, conv_general_dilated=ops.conv_general_dilated,
                   name=name)


class ConvBlock(nn.Module):
    """Convolution -> optional norm -> activation.

    `groups` > 1 gives a grouped convolution; `depthwise=True` sets groups to the number of
    input channels (`features` must then be a multiple of it). `use_bias=None` means a bias
    only when there is no norm. `norm_scale_init` lets residual blocks zero-initialise their
    last norm. `norm_eps` and `norm_momentum` (PyTorch's convention) set the norm's constants;
    `conv_name` and `norm_name` name the two sub-modules (torchvision's `Conv2dNormActivation`
    layout is "0" and "1").
    """
    features: int
    kernel_size: IntOrPair = 3
    strides: IntOrPair = 1
    padding: Padding = "SAME"
    dilation: IntOrPair = 1
    groups: int = 1
    depthwise: bool = False
    norm: str = "none"
    act: str = "relu"
    use_bias: bool | None = None
    kernel_init: Callable = nn.linear.default_kernel_init
    norm_scale_init: Callable = nn.initializers.ones
    norm_axis_name: str | None = None  # pmap's device axis: BatchNorm over the global batch
    norm_eps: float = 1e-5
    norm_momentum: float = 0.1
    conv_name: str = "conv"
    norm_name: str = "norm"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "ConvBlock")
        activation = get_activation(self.act)
        check_norm(self.norm)
        kernel = _pair(self.kernel_size, "kernel_size")
        strides = _pair(self.strides, "strides")
        dilation = _pair(self.dilation, "dilation")
        padding = normalize_padding(self.padding)
        groups = x.shape[-1] if self.depthwise else self.groups
        if x.shape[-1] % groups or self.features % groups:
            raise ValueError(f"ConvBlock: groups={groups} must divide both the input channels "
                             f"({x.shape[-1]}) and features ({self.features}).")
        _check_window_fits(x, kernel, dilation, padding, f"ConvBlock {self.name}")
        use_bias = self.norm == "none" if self.use_bias is None else self.use_bias
        x = conv(self.features, kernel, strides, padding, dilation=dilation, groups=groups,
                 use_bias=use_bias, kernel_init=self.kernel_init, dtype=self.dtype,
                 param_dtype=self.param_dtype, name=self.conv_name)(x)
        norm = make_norm(self.norm, train=train, features=self.features, dtype=self.dtype,
                         param_dtype=self.param_dtype, scale_init=self.norm_scale_init,
                         axis_name=self.norm_axis_name, epsilon=self.norm_eps,
                         momentum=self.norm_momentum, module_name=self.norm_name)
        if norm is not None:
            x = norm(x)
        return activation(x)


class ConvTranspose(nn.Module):
    """PyTorch's `ConvTranspose2d` (no groups, no dilation, no output padding): input pixel
    (i, j) adds `x[i, j] @ kernel[a, b]` to output pixel (i * s + a - p, j * s + b - p), so a
    2x2 kernel with stride 2 doubles H and W. The kernel is (kh, kw, in, out); PyTorch's
    weight is its (in, out, kh, kw) transpose, not flipped.

    `fast` (default): where windows do not overlap (kernel == strides, no padding) it is
    computed as a matmul per output phase plus a depth-to-space reshape, not by XLA's
    transposed convolution, whose gradient is very slow on CPU (`ops.conv_transpose`).
    """
    features: int
    kernel_size: IntOrPair = 2
    strides: IntOrPair = 2
    padding: IntOrPair = 0
    use_bias: bool = True
    fast: bool = True
    kernel_init: Callable = nn.linear.default_kernel_init
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_nhwc(x, "ConvTranspose")
        kernel_size = _pair(self.kernel_size, "kernel_size")
        strides = _pair(self.strides, "strides")
        padding = (self.padding,) * 2 if isinstance(self.padding, int) else tuple(self.padding)
        if len(padding) != 2 or not all(isinstance(p, int) and 0 <= p < k
                                        for p, k in zip(padding, kernel_size)):
            raise ValueError(f"ConvTranspose padding must be an int or a pair of ints in "
                             f"[0, kernel_size); got {self.padding!r}.")
        kernel = self.param("kernel", self.kernel_init,
                            (*kernel_size, x.shape[-1], self.features), self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        y = ops.conv_transpose(x, kernel, strides, padding, fast=self.fast)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                               self.param_dtype).astype(self.dtype)
        return y


class DenseBlock(nn.Module):
    """Dense -> activation -> dropout (dropout is active only when `train`)."""
    features: int
    act: str = "relu"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        activation = get_activation(self.act)
        x = nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="dense")(x)
        x = activation(x)
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return x


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018): channels rescaled by
    gate(fc2(act(fc1(mean over space)))), the two fully connected layers as 1x1 convolutions
    (torchvision's `SqueezeExcitation`: `fc1`, `fc2`)."""
    squeeze_features: int
    act: str = "relu"
    gate: str = "sigmoid"      # hard_sigmoid in MobileNetV3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_nhwc(x, "SqueezeExcitation")
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = get_activation(self.act)(conv(self.squeeze_features, 1, dtype=self.dtype, name="fc1")(s))
        s = get_activation(self.gate)(conv(x.shape[-1], 1, dtype=self.dtype, name="fc2")(s))
        return x * s


class StochasticDepth(nn.Module):
    """Drop path (Huang et al., 2016), torchvision's `StochasticDepth(p, "row")`: in training,
    each example's residual branch is zeroed with probability `rate` and the kept ones scaled by
    1 / (1 - rate); the identity in evaluation. Draws from the 'dropout' PRNG stream."""
    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"StochasticDepth rate must be in [0, 1], got {self.rate!r}.")
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / keep if keep > 0 else 0.0, 0.0).astype(x.dtype)


def layer_scale(module: nn.Module, x: jax.Array, init_value: float,
                name: str = "layer_scale") -> jax.Array:
    """x times a learned per-channel scale, a parameter `name` of `module` initialised to
    `init_value` (Touvron et al., 2021; ConvNeXt's residual branches start at 1e-6)."""
    scale = module.param(name, nn.initializers.constant(init_value), (x.shape[-1],))
    return x * scale.astype(x.dtype)


def _pool_args(x, window, strides, padding, what):
    check_nhwc(x, what)
    window = _pair(window, "pool window")
    strides = window if strides is None else _pair(strides, "pool strides")
    padding = normalize_padding(padding)
    _check_window_fits(x, window, (1, 1), padding, what)
    return window, strides, padding


def max_pool(x: jax.Array, window: IntOrPair = 2, strides: IntOrPair | None = None,
             padding: Padding = "VALID") -> jax.Array:
    """Max over each window; padded positions never win (they are -inf). The gradient goes to
    the first maximum of each window, as in PyTorch; `ops.max_pool` computes it fast on CPU."""
    window, strides, padding = _pool_args(x, window, strides, padding, "max_pool")
    if padding == "VALID":
        padding = ((0, 0), (0, 0))
    elif padding == "SAME":
        padding = tuple(map(tuple, jax.lax.padtype_to_pads(x.shape[1:3], window, strides, "SAME")))
    return ops.max_pool(x, window, strides, padding)


def avg_pool(x: jax.Array, window: IntOrPair = 2, strides: IntOrPair | None = None,
             padding: Padding = "VALID", count_include_pad: bool = True) -> jax.Array:
    """Mean over each window; padded zeros count unless `count_include_pad=False` (as PyTorch)."""
    window, strides, padding = _pool_args(x, window, strides, padding, "avg_pool")
    return nn.avg_pool(x, window, strides=strides, padding=padding,
                       count_include_pad=count_include_pad)


def global_avg_pool(x: jax.Array) -> jax.Array:
    check_nhwc(x, "global_avg_pool")
    return jnp.mean(x, axis=(1, 2))


def global_max_pool(x: jax.Array) -> jax.Array:
    check_nhwc(x, "global_max_pool")
    return jnp.max(x, axis=(1, 2))


def adaptive_avg_pool(x: jax.Array, output_size: IntOrPair) -> jax.Array:
    """PyTorch's AdaptiveAvgPool2d: output cell i averages rows floor(i*H/out) .. ceil((i+1)*H/out).

    When the input already has the output size this is the identity (AlexNet and VGG at 224x224).
    """
    check_nhwc(x, "adaptive_avg_pool")
    out_h, out_w = _pair(output_size, "output_size")
    h, w = x.shape[1:3]
    if (h, w) == (out_h, out_w):
        return x
    if h % out_h == 0 and w % out_w == 0:
        return avg_pool(x, (h // out_h, w // out_w))

    def bins(size, out):
        return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]

    rows = [jnp.mean(x[:, a:b], axis=1, keepdims=True) for a, b in bins(h, out_h)]
    x = jnp.concatenate(rows, axis=1)
    cols = [jnp.mean(x[:, :, a:b], axis=2, keepdims=True) for a, b in bins(w, out_w)]
    return jnp.concatenate(cols, axis=2)


def resize_bilinear(x: jax.Array, size: IntOrPair) -> jax.Array:
    """NHWC `x` resized to `size` (H, W) by bilinear interpolation with half-pixel centers:
    PyTorch's `F.interpolate(x, size, mode='bilinear', align_corners=False)`, which segmentation
    heads use to bring their logits to the input's size (for up-sampling; down-sampling
    without antialiasing, as PyTorch, not the antialiased default of `jax.image.resize`)."""
    check_nhwc(x, "resize_bilinear")
    h, w = _pair(size, "size")
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear", antialias=False)


POOLS: dict[str, Callable[..., jax.Array]] = {"max": max_pool, "avg": avg_pool}


def get_pool(name: str) -> Callable[..., jax.Array]:
    if name not in POOLS:
        raise _unknown("pool", name, POOLS)
    return POOLS[name]


class Pool(nn.Module):
    """Pooling as a module, for composing with other blocks: kind 'max', 'avg',
    'global_avg' or 'global_max'."""
    kind: str = "max"
    window: IntOrPair = 2
    strides: IntOrPair | None = None
    padding: Padding = "VALID"

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "global_avg":
            return global_avg_pool(x)
        if self.kind == "global_max":
            return global_max_pool(x)
        if self.kind not in POOLS:
            raise _unknown("pool kind", self.kind, [*POOLS, "global_avg", "global_max"])
        return POOLS[self.kind](x, self.window, self.strides, self.padding)
