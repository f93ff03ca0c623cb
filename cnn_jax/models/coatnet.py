"""CoAtNet (Dai et al., 2021): depthwise-convolution stages, then relative-attention stages.

CoAtNet-0 (the paper's Table 3 and 4: 25M parameters at 224x224):
    S0  two 3x3 convolutions, 64 channels, stride 2           112x112
    S1  2 MBConv blocks, 96 channels                           56x56
    S2  3 MBConv blocks, 192 channels                          28x28
    S3  5 transformer blocks with relative attention, 384      14x14
    S4  2 transformer blocks with relative attention, 768      7x7
    global average pooling, LayerNorm, dense head

MBConv blocks are pre-norm inverted bottlenecks (BatchNorm, 1x1 expansion x4, GELU, depthwise
3x3, squeeze-and-excitation to 1/4 of the expanded channels, 1x1 projection). Transformer blocks are
pre-norm (LayerNorm) attention with a learned relative position bias per head over the
(2H - 1) x (2W - 1) offsets (head size 32), and a 4x GELU MLP. The first block of each stage
halves the resolution: its shortcut is a 2x2 max pool and a 1x1 projection, its residual
branch strides (MBConv: the depthwise convolution; transformer: a 2x2 max pool before the
attention), as in the paper's Section 3. Stochastic depth on every residual branch.
The relative bias tables fit one input size (224x224 for `coatnet_0`, 32x32 for the small
`coatnet_cifar`).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import (SqueezeExcitation, StochasticDepth, check_nhwc, conv, make_norm,
                            max_pool)
from cnn_jax.models.blocks import conv_norm_act


def relative_position_index(h: int, w: int) -> jax.Array:
    """(H*W, H*W) index into a (2H - 1) * (2W - 1) table of the offset from query to key."""
    coords = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")).reshape(2, -1)
    rel = coords[:, None, :] - coords[:, :, None]          # key - query, (2, HW, HW)
    return (rel[0] + h - 1) * (2 * w - 1) + rel[1] + w - 1


class RelativeAttention(nn.Module):
    """Multi-head self-attention over an (N, H, W, C) map with a learned relative position bias
    per head (CoAtNet's "relative attention"), projected to `features` channels."""
    features: int
    head_dim: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, _ = x.shape
        if self.features % self.head_dim:
            raise ValueError(f"RelativeAttention: {self.features} channels do not split into "
                             f"heads of {self.head_dim}.")
        heads = self.features // self.head_dim
        qkv = nn.Dense(3 * self.features, dtype=self.dtype, name="qkv")(x.reshape(n, h * w, -1))
        q, k, v = jnp.split(qkv.reshape(n, h * w, 3, heads, self.head_dim), 3, axis=2)
        q, k, v = (t[:, :, 0].transpose(0, 2, 1, 3) for t in (q, k, v))  # (N, heads, HW, d)
        table = self.param("relative_bias", nn.initializers.truncated_normal(0.02),
                           ((2 * h - 1) * (2 * w - 1), heads))
        bias = table[relative_position_index(h, w)].transpose(2, 0, 1)    # (heads, HW, HW)
        logits = jnp.einsum("bnqd,bnkd->bnqk", q, k) * self.head_dim ** -0.5 + bias
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bnqk,bnkd->bnqd", weights, v).transpose(0, 2, 1, 3)
        out = nn.Dense(self.features, dtype=self.dtype, name="proj")(out.reshape(n, h * w, -1))
        return out.reshape(n, h, w, self.features)


class MBConvBlock(nn.Module):
    features: int
    strides: int = 1
    expand_ratio: int = 4
    drop_path: float = 0.0
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        common = dict(norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        shortcut = x
        if self.strides > 1:
            shortcut = max_pool(shortcut, self.strides)
        if shortcut.shape[-1] != self.features:
            shortcut = conv(self.features, 1, dtype=self.dtype, name="shortcut")(shortcut)
        y = make_norm("batch", train=train, features=x.shape[-1], dtype=self.dtype,
                      param_dtype=jnp.float32, module_name="pre_norm",
                      axis_name=self.norm_axis_name)(x)
        mid = self.features * self.expand_ratio
        y = conv_norm_act(mid, 1, act="gelu", name="expand", **common)(y, train)
        y = conv_norm_act(mid, 3, self.strides, groups=mid, act="gelu", name="depthwise",
                          **common)(y, train)
        y = SqueezeExcitation(mid // 4, act="gelu", dtype=self.dtype, name="se")(y)
        y = conv(self.features, 1, dtype=self.dtype, name="project")(y)
        return shortcut + StochasticDepth(self.drop_path)(y, train)


class TransformerBlock(nn.Module):
    features: int
    strides: int = 1
    head_dim: int = 32
    mlp_ratio: int = 4
    drop_path: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        shortcut = x
        y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="attention_norm")(x)
        if self.strides > 1:
            shortcut, y = max_pool(shortcut, self.strides), max_pool(y, self.strides)
        if shortcut.shape[-1] != self.features:
            shortcut = nn.Dense(self.features, dtype=self.dtype, name="shortcut")(shortcut)
        y = RelativeAttention(self.features, self.head_dim, self.dtype, name="attention")(y)
        x = shortcut + StochasticDepth(self.drop_path)(y, train)
        y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="mlp_norm")(x)
        y = nn.Dense(self.mlp_ratio * self.features, dtype=self.dtype, name="mlp_in")(y)
        y = nn.Dense(self.features, dtype=self.dtype, name="mlp_out")(nn.gelu(y, approximate=False))
        return x + StochasticDepth(self.drop_path)(y, train)


class CoAtNet(nn.Module):
    depths: Sequence[int] = (2, 3, 5, 2)          # S1 (MBConv), S2 (MBConv), S3, S4 (attention)
    widths: Sequence[int] = (96, 192, 384, 768)
    stem_width: int = 64
    stem_strides: int = 2                         # 1 for 32x32 inputs (the `_cifar` variant)
    head_dim: int = 32
    stochastic_depth_rate: float = 0.2
    num_classes: int = 1000
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "CoAtNet")
        common = dict(norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        x = conv_norm_act(self.stem_width, 3, self.stem_strides, act="gelu", name="stem_0",
                          **common)(x, train)
        x = conv(self.stem_width, 3, 1, 1, dtype=self.dtype, name="stem_1")(x)
        total, block_id = sum(self.depths), 0
        for stage, (depth, width) in enumerate(zip(self.depths, self.widths), start=1):
            for j in range(depth):
                rate = self.stochastic_depth_rate * block_id / max(total - 1, 1)
                strides = 2 if j == 0 else 1
                if stage <= 2:
                    x = MBConvBlock(width, strides, drop_path=rate, name=f"s{stage}_{j}",
                                    **common)(x, train)
                else:
                    x = TransformerBlock(width, strides, self.head_dim, drop_path=rate,
                                         dtype=self.dtype, name=f"s{stage}_{j}")(x, train)
                block_id += 1
        x = jnp.mean(x, axis=(1, 2))
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="final_norm")(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
