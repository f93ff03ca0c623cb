"""Where XLA compiles the plain form slowly on CPU: three operations rewritten, and the compiler
options the steps use. The operations compute exactly what the plain forms compute
(tests/test_ops.py compares outputs and gradients).

- `max_pool`: the gradient of `lax.reduce_window(max)` is a select-and-scatter, which XLA's
  CPU backend runs as a slow scalar loop (on a 128x32x32x64 batch, 2x2 windows: 177 ms against
  22 ms here). Its derivative rule here is written with a reshape (non-overlapping windows) or
  one strided slice per window position, which XLA fuses into a few vectorized loops. Ties go
  to the first maximum in the window in row-major order, as in `lax.reduce_window`'s own
  gradient and in PyTorch.
- `conv_general_dilated`: a convolution with at most `MATMUL_CONV_MAX_POSITIONS` output
  positions (VGG's 3x3 convolutions on a 2x2 map, a 5x5 kernel over a 5x5 map) is a dense
  layer in disguise. XLA's CPU backend turns some of them into a convolution it runs about
  100x slower than the matmul (VGG-11 on CIFAR: four of them took 8.6 s of a 10.7 s train
  step); here they are an explicit patches-times-kernel matmul. So are convolutions of
  single-channel images (LeNet-5's first layer), whose windows one gather collects: XLA's
  kernels vectorize over input channels and have one here (LeNet-5 step 13.6 -> 11.4 ms).
  Depthwise convolutions with 3x3 or 5x5 kernels (MobileNet, EfficientNet) are a sum of
  shifted slices times per-channel weights (`depthwise_conv_shifted`): XLA's grouped
  convolution and its gradients ran 2-8x slower here (flax issue 4207;
  `benchmarks/depthwise_conv.py`). Every other convolution goes to `lax.conv_general_dilated`
  unchanged.
- `conv_transpose`: PyTorch's ConvTranspose2d. XLA's CPU transposed convolution (a
  convolution of the zero-dilated input) has a very slow gradient (jax issue 23783;
  benchmarks/results/conv_transpose.md). With non-overlapping windows (kernel == strides,
  U-Net's 2x2 up-convolutions) it is here one matmul for all output phases and a
  depth-to-space reshape (tests/test_segmentation_models.py compares the two).
- `compiler_options()`: XLA options for jitting a train or eval step. On CPU they turn off
  XLA's YNNPACK fusions, so that convolutions and matmuls run on XLA's own (Eigen) kernels:
  YNNPACK's weight-gradient convolutions ran 2-4x slower than Eigen's here (train steps on 2
  cores: ResNet-18 CIFAR 6.1 -> 4.3 s, VGG-11 CIFAR 0.96 -> 0.80 s, LeNet-5 17 -> 16 ms).
  `DataParallel` passes them to `jax.jit`; pass them yourself when you jit a step by hand:
  `jax.jit(train_step, donate_argnums=0, compiler_options=ops.compiler_options())`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MATMUL_CONV_MAX_POSITIONS = 4  # convolutions with at most this many outputs: patches x kernel


def _window_slices(x, window, strides, out_hw, dilation=(1, 1)):
    """One (N, out_h, out_w, C) strided slice of NHWC `x` per window position, row-major."""
    n, c = x.shape[0], x.shape[3]
    (kh, kw), (sh, sw), (oh, ow), (dh, dw) = window, strides, out_hw, dilation
    return [lax.slice(x, (0, i * dh, j * dw, 0),
                      (n, i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1, c),
                      (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Max over NHWC windows. `padding` is explicit ((top, bottom), (left, right)); padded
    positions are -inf and so never win."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                             ((0, 0), *padding, (0, 0)))


@max_pool.defjvp
def _max_pool_jvp(window, strides, padding, primals, tangents):
    (x,), (t,) = primals, tangents
    y = max_pool(x, window, strides, padding)
    if tuple(window) == tuple(strides) and padding == ((0, 0), (0, 0)):
        return y, _tiled_max_pool_tangent(x, t, y, window)
    pads = ((0, 0), *padding, (0, 0))
    x_windows = _window_slices(jnp.pad(x, pads, constant_values=-jnp.inf), window, strides,
                               y.shape[1:3])
    t_windows = _window_slices(jnp.pad(t, pads), window, strides, y.shape[1:3])
    # The tangent is linear in t, so JAX transposes it for the gradient: each slice becomes a
    # pad, all fused into one pass over the input.
    taken = jnp.zeros(y.shape, bool)
    y_dot = jnp.zeros(y.shape, t.dtype)
    for x_window, t_window in zip(x_windows, t_windows):
        first = (x_window == y) & ~taken
        y_dot = y_dot + jnp.where(first, t_window, 0)
        taken = taken | first
    return y, y_dot


def _tiled_max_pool_tangent(x, t, y, window):
    """Non-overlapping windows: each window is an axis pair of a reshape, so the gradient is
    elementwise work in the input's own layout (no slices, no pads)."""
    (kh, kw), (n, oh, ow, c) = window, y.shape
    tiles = lambda a: a[:, :oh * kh, :ow * kw].reshape(n, oh, kh, ow, kw, c)
    position = (jnp.arange(kh)[:, None, None] * kw + jnp.arange(kw)[None, None, :])
    position = position.reshape(1, 1, kh, 1, kw, 1)  # row-major index within the window
    is_max = tiles(x) == y[:, :, None, :, None, :]
    first = jnp.min(jnp.where(is_max, position, kh * kw), axis=(2, 4), keepdims=True)
    return jnp.sum(jnp.where(position == first, tiles(t), 0), axis=(2, 4))


def compiler_options() -> dict[str, str]:
    """XLA options for a jitted step on JAX's default backend (see the module docstring)."""
    if jax.default_backend() == "cpu":
        return {"xla_cpu_experimental_ynn_fusion_type": ""}  # empty: no YNNPACK fusions
    return {}


_NHWC_HWIO = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
# Depthwise convolutions with at most this many kernel taps (3x3, 5x5) run as shifted slices
# (`depthwise_conv_shifted`): 2-8x faster forward and backward than XLA's grouped convolution
# on CPU (`benchmarks/depthwise_conv.py`); larger kernels (ConvNeXt's 7x7) are faster as the
# grouped convolution.
DEPTHWISE_SHIFTED_MAX_TAPS = 25


def _gathered_patches(x, window, strides, out_hw, dilation):
    """(N, out_h, out_w, kh * kw) windows of a single-channel NHWC `x` in one gather."""
    n, h, w, _ = x.shape
    (kh, kw), (sh, sw), (oh, ow), (dh, dw) = window, strides, out_hw, dilation
    rows = np.arange(oh)[:, None, None, None] * sh + np.arange(kh)[None, None, :, None] * dh
    cols = np.arange(ow)[None, :, None, None] * sw + np.arange(kw)[None, None, None, :] * dw
    index = (rows * w + cols).reshape(-1)  # (out_h, out_w, kh, kw), row-major as the kernel
    return x.reshape(n, h * w)[:, index].reshape(n, oh, ow, kh * kw)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated`, with convolutions of few output positions or of one input
    channel done as a matmul (see the module docstring). Same signature; pass it as
    `nn.Conv(conv_general_dilated=...)`."""
    call = functools.partial(
        lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
    dnums = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    nhwc = (lhs.ndim == 4 and tuple(map(tuple, dnums)) == _NHWC_HWIO and batch_group_count == 1
            and all(d == 1 for d in (lhs_dilation or (1, 1))))
    depthwise = (nhwc and feature_group_count > 1 and feature_group_count == lhs.shape[3]
                 == rhs.shape[3] and rhs.shape[2] == 1
                 and rhs.shape[0] * rhs.shape[1] <= DEPTHWISE_SHIFTED_MAX_TAPS)
    if not (nhwc and (feature_group_count == 1 or depthwise)):
        return call()
    window = rhs.shape[:2]
    dilation = tuple(rhs_dilation or (1, 1))
    if isinstance(padding, str):
        dilated = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
        padding = lax.padtype_to_pads(lhs.shape[1:3], dilated, window_strides, padding)
    if depthwise:
        return depthwise_conv_shifted(lhs, rhs, tuple(window_strides),
                                      tuple(map(tuple, padding)), dilation)
    out_hw = [(size + lo + hi - ((k - 1) * d + 1)) // s + 1
              for size, (lo, hi), k, d, s in zip(lhs.shape[1:3], padding, window, dilation,
                                                  window_strides)]
    single_channel = lhs.shape[3] == 1
    if out_hw[0] * out_hw[1] > MATMUL_CONV_MAX_POSITIONS and not single_channel:
        return call()
    x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    if single_channel:
        patches = _gathered_patches(x, window, window_strides, out_hw, dilation)
    else:
        patches = jnp.concatenate(_window_slices(x, window, window_strides, out_hw, dilation),
                                  -1)
    kernel = rhs.reshape(-1, rhs.shape[-1])  # (kh * kw * C_in, C_out), row-major as the patches
    return lax.dot_general(patches, kernel, (((3,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=preferred_element_type)


def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                           padding: tuple[tuple[int, int], tuple[int, int]],
                           dilation: tuple[int, int] = (1, 1)) -> jax.Array:
    """A depthwise convolution (NHWC `x`, HWIO `kernel` of shape (kh, kw, 1, C)) as the sum over
    kernel taps of a strided slice of `x` times that tap's per-channel weights: elementwise
    work XLA fuses, and whose gradient is again slices and sums. Equal to
    `lax.conv_general_dilated(..., feature_group_count=C)` up to float rounding."""
    kh, kw, _, c = kernel.shape
    if x.shape[-1] != c:
        raise ValueError(f"depthwise_conv_shifted: kernel has {c} channels, input {x.shape[-1]}.")
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    out_hw = [(size - ((k - 1) * d + 1)) // s + 1
              for size, k, d, s in zip(x.shape[1:3], (kh, kw), dilation, strides)]
    taps = _window_slices(x, (kh, kw), strides, out_hw, dilation)
    weights = kernel.reshape(kh * kw, c).astype(x.dtype)
    return sum(tap * weights[i] for i, tap in enumerate(taps))


def conv_transpose(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                   padding: tuple[int, int] = (0, 0), *, fast: bool = True) -> jax.Array:
    """PyTorch's `ConvTranspose2d` on NHWC `x`: input pixel (i, j) adds `x[i, j] @ kernel[a, b]`
    to output pixel (i * s + a - p, j * s + b - p); the output is
    ((H - 1) * s + k - 2p, (W - 1) * s + k - 2p). `kernel` is (kh, kw, in, out).

    The plain form is XLA's transposed convolution: a convolution of the zero-dilated input
    with the flipped kernel. With `fast` and non-overlapping windows (kernel == strides, no
    padding: U-Net's 2x2 up-convolution) it is one matmul per output phase (a, b), the phases
    interleaved by a reshape (depth-to-space): the same sums without the multiplications by
    the dilation's zeros, which XLA's CPU backend otherwise does (jax issue 23783).
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel.shape[:2], strides, padding
    if fast and (kh, kw) == (sh, sw) and (ph, pw) == (0, 0):
        n, h, w, c = x.shape
        out = kernel.shape[-1]
        # (N*H*W, C) @ (C, kh*kw*out): every phase's outputs in one matmul ...
        y = x.reshape(n * h * w, c) @ kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw * out)
        # ... then depth-to-space: output (i*kh + a, j*kw + b) is phase (a, b) of pixel (i, j).
        y = y.reshape(n, h, w, kh, kw, out).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(n, h * kh, w * kw, out)
    return lax.conv_general_dilated(
        x, kernel[::-1, ::-1], (1, 1), ((kh - 1 - ph, kh - 1 - ph), (kw - 1 - pw, kw - 1 - pw)),
        lhs_dilation=(sh, sw), dimension_numbers=("NHWC", "HWIO", "NHWC"))
