"""ConvNeXt-Tiny/-Small/-Base (Liu et al., 2022), laid out as torchvision's `convnext_*`.

A 4x4/4 patchify stem with LayerNorm; four stages of blocks (depthwise 7x7 convolution,
LayerNorm over channels, an inverted bottleneck of two linear layers with GELU, a learned
per-channel layer scale starting at 1e-6, stochastic depth) separated by LayerNorm + 2x2/2
convolutions; global average pooling, LayerNorm, linear head. LayerNorm epsilon 1e-6.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import StochasticDepth, check_nhwc, conv, layer_scale
from cnn_jax.models.blocks import conv_norm_act, select_features

TRUNC_INIT = nn.initializers.truncated_normal(0.02)
# (channels per stage, blocks per stage, stochastic depth rate) as torchvision.
VARIANTS = {"tiny": ((96, 192, 384, 768), (3, 3, 9, 3), 0.1),
            "small": ((96, 192, 384, 768), (3, 3, 27, 3), 0.4),
            "base": ((128, 256, 512, 1024), (3, 3, 27, 3), 0.5)}


class CNBlock(nn.Module):
    drop_path: float = 0.0
    layer_scale_init: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dim = x.shape[-1]
        y = conv(dim, 7, 1, 3, groups=dim, kernel_init=TRUNC_INIT, dtype=self.dtype,
                 name="block.0")(x)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="block.2")(y)
        y = nn.Dense(4 * dim, kernel_init=TRUNC_INIT, dtype=self.dtype, name="block.3")(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dense(dim, kernel_init=TRUNC_INIT, dtype=self.dtype, name="block.5")(y)
        y = layer_scale(self, y, self.layer_scale_init)
        return x + StochasticDepth(self.drop_path)(y, train)


class ConvNeXt(nn.Module):
    widths: Sequence[int] = (96, 192, 384, 768)
    depths: Sequence[int] = (3, 3, 9, 3)
    stochastic_depth_rate: float = 0.1
    layer_scale_init: float = 1e-6
    stem_patch: int = 4      # 1 or 2 for 32x32 inputs (the `_cifar` variant)
    num_classes: int = 1000
    dtype: Any = jnp.float32
    out_strides: Sequence[int] | None = None  # a backbone: {stride: feature map}, no classifier

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "ConvNeXt")
        x = conv_norm_act(self.widths[0], self.stem_patch, self.stem_patch, padding=0,
                          norm="layer", norm_eps=1e-6, act="none", use_bias=True,
                          dtype=self.dtype, name="features.0")(x, train)
        total, block_id, index, stride = sum(self.depths), 0, 1, self.stem_patch
        features = {}
        for stage, (width, depth) in enumerate(zip(self.widths, self.depths)):
            for j in range(depth):
                rate = self.stochastic_depth_rate * block_id / (total - 1.0)
                x = CNBlock(rate, self.layer_scale_init, self.dtype,
                            name=f"features.{index}.{j}")(x, train)
                block_id += 1
            features[stride * 2**stage] = x
            index += 1
            if stage + 1 < len(self.widths):  # downsampling: LayerNorm "0", 2x2/2 conv "1"
                x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=f"features.{index}.0")(x)
                x = conv(self.widths[stage + 1], 2, 2, 0, kernel_init=TRUNC_INIT,
                         dtype=self.dtype, name=f"features.{index}.1")(x)
                index += 1
        if self.out_strides is not None:
            return select_features(features, self.out_strides, "ConvNeXt")
        x = jnp.mean(x, axis=(1, 2))
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="classifier.0")(x)
        x = nn.Dense(self.num_classes, kernel_init=TRUNC_INIT, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
