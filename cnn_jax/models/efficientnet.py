"""EfficientNet-B0 to B3 (Tan & Le, 2019), laid out as torchvision's `efficientnet_b0`..`b3`.

MBConv blocks (1x1 expansion, depthwise kxk, squeeze-and-excitation, linear 1x1 projection,
SiLU) in seven stages; compound scaling multiplies the channels by `width_mult` (rounded to
multiples of 8) and the blocks per stage by `depth_mult` (rounded up). Stochastic depth on
the residual branches grows linearly from 0 to `stochastic_depth_rate` over the blocks.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import SqueezeExcitation, StochasticDepth, check_nhwc
from cnn_jax.models.blocks import conv_norm_act, make_divisible, select_features

# (expansion, kernel, stride, in channels, out channels, blocks) per stage: the paper's Table 1.
B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
             (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
             (6, 3, 1, 192, 320, 1))
# (width_mult, depth_mult, dropout) of each variant, as torchvision.
VARIANTS = {"b0": (1.0, 1.0, 0.2), "b1": (1.0, 1.1, 0.2), "b2": (1.1, 1.2, 0.3),
            "b3": (1.2, 1.4, 0.3)}


class MBConv(nn.Module):
    features: int
    kernel: int
    strides: int
    expand_ratio: float
    drop_path: float = 0.0
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        common = dict(norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        expanded = make_divisible(x.shape[-1] * self.expand_ratio)
        y, k = x, 0
        if expanded != x.shape[-1]:
            y = conv_norm_act(expanded, 1, act="silu", name="block.0", **common)(y, train)
            k = 1
        y = conv_norm_act(expanded, self.kernel, self.strides, groups=expanded, act="silu",
                          name=f"block.{k}", **common)(y, train)
        y = SqueezeExcitation(max(1, x.shape[-1] // 4), act="silu", dtype=self.dtype,
                              name=f"block.{k + 1}")(y)
        y = conv_norm_act(self.features, 1, act="none", name=f"block.{k + 2}", **common)(y, train)
        if self.strides == 1 and x.shape[-1] == self.features:
            return x + StochasticDepth(self.drop_path)(y, train)
        return y


class EfficientNet(nn.Module):
    width_mult: float = 1.0
    depth_mult: float = 1.0
    dropout_rate: float = 0.2
    stochastic_depth_rate: float = 0.2
    num_classes: int = 1000
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32
    out_strides: Sequence[int] | None = None  # a backbone: {stride: feature map}, no classifier

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "EfficientNet")
        common = dict(norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        stages = [(t, k, s, make_divisible(c_in * self.width_mult),
                   make_divisible(c_out * self.width_mult), math.ceil(n * self.depth_mult))
                  for t, k, s, c_in, c_out, n in B0_STAGES]
        x = conv_norm_act(stages[0][3], 3, 2, act="silu", name="features.0", **common)(x, train)
        total, block_id, stride = sum(s[-1] for s in stages), 0, 2
        features = {stride: x}
        for i, (t, k, s, _, c_out, n) in enumerate(stages, start=1):
            for j in range(n):
                x = MBConv(c_out, k, s if j == 0 else 1, t,
                           self.stochastic_depth_rate * block_id / total,
                           name=f"features.{i}.{j}", **common)(x, train)
                block_id += 1
            stride *= s
            features[stride] = x
        x = conv_norm_act(4 * stages[-1][4], 1, act="silu", name=f"features.{len(stages) + 1}",
                          **common)(x, train)
        features[stride] = x
        if self.out_strides is not None:
            return select_features(features, self.out_strides, "EfficientNet")
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        bound = 1.0 / math.sqrt(self.num_classes)  # torchvision's U(-bound, bound)

        def head_init(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        x = nn.Dense(self.num_classes, kernel_init=head_init, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
