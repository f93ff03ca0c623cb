"""RegNetY-400MF (Radosavovic et al., 2020), laid out as torchvision's `regnet_y_400mf`.

The stage widths and depths come from the quantized linear rule of the paper (w_0, w_a, w_m,
depth), computed as torchvision computes them; blocks are residual bottlenecks with grouped
3x3 convolutions (group width 8) and squeeze-and-excitation (the "Y").
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from cnn_jax.layers import SqueezeExcitation, check_nhwc
from cnn_jax.models.blocks import conv_norm_act, make_divisible, select_features


def regnet_stages(depth: int, w_0: int, w_a: float, w_m: float, group_width: int,
                  bottleneck: float = 1.0) -> tuple[tuple[int, int, int], ...]:
    """(width, depth, group width) per stage from the paper's parameters (torchvision's
    `BlockParams.from_init_params`, in float32 as there)."""
    widths_cont = np.arange(depth, dtype=np.float32) * np.float32(w_a) + np.float32(w_0)
    capacity = np.round(np.log(widths_cont / np.float32(w_0)) / np.float32(math.log(w_m)))
    block_widths = (np.round(np.float32(w_0) * np.power(np.float32(w_m), capacity,
                                                          dtype=np.float32) / 8) * 8).astype(int)
    block_widths = block_widths.tolist()
    splits = [w != wp for w, wp in zip(block_widths + [0], [0] + block_widths)]
    widths = [w for w, t in zip(block_widths, splits[:-1]) if t]
    depths = np.diff([d for d, t in enumerate(splits) if t]).tolist()
    stages = []
    for w, d in zip(widths, depths):
        w_bot = int(w * bottleneck)
        g = min(group_width, w_bot)
        stages.append((int(make_divisible(w_bot, g) / bottleneck), d, g))
    return tuple(stages)


class ResBottleneckBlock(nn.Module):
    features: int
    strides: int
    group_width: int
    se_ratio: float = 0.25
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        common = dict(norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        w_in, w_b = x.shape[-1], self.features
        y = conv_norm_act(w_b, 1, act="relu", name="f.a", **common)(x, train)
        y = conv_norm_act(w_b, 3, self.strides, groups=w_b // self.group_width, act="relu",
                          name="f.b", **common)(y, train)
        if self.se_ratio:
            y = SqueezeExcitation(int(round(self.se_ratio * w_in)), act="relu", dtype=self.dtype,
                                  name="f.se")(y)
        y = conv_norm_act(self.features, 1, act="none", name="f.c", **common)(y, train)
        if w_in != self.features or self.strides != 1:
            x = conv_norm_act(self.features, 1, self.strides, act="none", name="proj",
                              **common)(x, train)
        return nn.relu(x + y)


class RegNet(nn.Module):
    stages: Sequence[tuple[int, int, int]] = regnet_stages(16, 48, 27.89, 2.09, 8)
    se_ratio: float = 0.25
    stem_width: int = 32
    num_classes: int = 1000
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32
    out_strides: Sequence[int] | None = None  # a backbone: {stride: feature map}, no classifier

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "RegNet")
        common = dict(norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        x = conv_norm_act(self.stem_width, 3, 2, act="relu", name="stem", **common)(x, train)
        features = {2: x}
        for i, (width, depth, group_width) in enumerate(self.stages, start=1):
            for j in range(depth):
                x = ResBottleneckBlock(width, 2 if j == 0 else 1, group_width, self.se_ratio,
                                       name=f"trunk_output.block{i}.block{i}-{j}",
                                       **common)(x, train)
            features[2 ** (i + 1)] = x
        if self.out_strides is not None:
            return select_features(features, self.out_strides, "RegNet")
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                     dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
