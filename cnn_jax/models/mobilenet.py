"""MobileNetV2 (Sandler et al., 2018) and MobileNetV3-Small/-Large (Howard et al., 2019), laid
out as torchvision's `mobilenet_v2`, `mobilenet_v3_small`, `mobilenet_v3_large`.

Inverted residual blocks: a 1x1 expansion, a depthwise 3x3 (or 5x5), [squeeze-and-excitation,]
a linear 1x1 projection, and the identity shortcut where the shape allows. V3 uses hard-swish
in its later blocks and BatchNorm with epsilon 1e-3 and momentum 0.01, as torchvision.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import SqueezeExcitation, check_nhwc
from cnn_jax.models.blocks import LINEAR_INIT, conv_norm_act, make_divisible, select_features

# MobileNetV2: (expansion t, channels c, blocks n, stride s) per stage.
V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))


class V3Block(NamedTuple):
    in_features: int
    kernel: int
    expanded: int
    out_features: int
    use_se: bool
    act: str      # relu | hard_swish
    strides: int


_RE, _HS = "relu", "hard_swish"
V3_LARGE = tuple(V3Block(*b) for b in (
    (16, 3, 16, 16, False, _RE, 1), (16, 3, 64, 24, False, _RE, 2),
    (24, 3, 72, 24, False, _RE, 1), (24, 5, 72, 40, True, _RE, 2),
    (40, 5, 120, 40, True, _RE, 1), (40, 5, 120, 40, True, _RE, 1),
    (40, 3, 240, 80, False, _HS, 2), (80, 3, 200, 80, False, _HS, 1),
    (80, 3, 184, 80, False, _HS, 1), (80, 3, 184, 80, False, _HS, 1),
    (80, 3, 480, 112, True, _HS, 1), (112, 3, 672, 112, True, _HS, 1),
    (112, 5, 672, 160, True, _HS, 2), (160, 5, 960, 160, True, _HS, 1),
    (160, 5, 960, 160, True, _HS, 1)))
V3_SMALL = tuple(V3Block(*b) for b in (
    (16, 3, 16, 16, True, _RE, 2), (16, 3, 72, 24, False, _RE, 2),
    (24, 3, 88, 24, False, _RE, 1), (24, 5, 96, 40, True, _HS, 2),
    (40, 5, 240, 40, True, _HS, 1), (40, 5, 240, 40, True, _HS, 1),
    (40, 5, 120, 48, True, _HS, 1), (48, 5, 144, 48, True, _HS, 1),
    (48, 5, 288, 96, True, _HS, 2), (96, 5, 576, 96, True, _HS, 1),
    (96, 5, 576, 96, True, _HS, 1)))


class InvertedResidualV2(nn.Module):
    features: int
    strides: int
    expand_ratio: int
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        common = dict(norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        hidden = int(round(x.shape[-1] * self.expand_ratio))
        y, k = x, 0
        if self.expand_ratio != 1:
            y = conv_norm_act(hidden, 1, act="relu6", name="conv.0", **common)(y, train)
            k = 1
        y = conv_norm_act(hidden, 3, self.strides, groups=hidden, act="relu6", name=f"conv.{k}",
                          **common)(y, train)
        # The linear projection is a bare Conv2d "conv.{k+1}" and BatchNorm "conv.{k+2}".
        y = conv_norm_act(self.features, 1, act="none", name="conv", conv_name=str(k + 1),
                          norm_name=str(k + 2), **common)(y, train)
        return x + y if self.strides == 1 and x.shape[-1] == self.features else y


class MobileNetV2(nn.Module):
    num_classes: int = 1000
    width_mult: float = 1.0
    dropout_rate: float = 0.2
    stem_strides: int = 2       # 1 for 32x32 inputs (the `_cifar` variant) ...
    stage_strides: Sequence[int] = tuple(s for *_, s in V2_SETTING)  # ... and (1, 1, 2, 2, 1, 2, 1)
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32
    out_strides: Sequence[int] | None = None  # a backbone: {stride: feature map}, no classifier

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "MobileNetV2")
        common = dict(norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        x = conv_norm_act(make_divisible(32 * self.width_mult), 3, self.stem_strides,
                          act="relu6", name="features.0", **common)(x, train)
        stride = self.stem_strides
        features, i = {stride: x}, 1
        for (t, c, n, _), s in zip(V2_SETTING, self.stage_strides):
            for j in range(n):
                x = InvertedResidualV2(make_divisible(c * self.width_mult), s if j == 0 else 1, t,
                                       name=f"features.{i}", **common)(x, train)
                stride *= s if j == 0 else 1
                features[stride], i = x, i + 1
        last = make_divisible(1280 * max(1.0, self.width_mult))
        x = conv_norm_act(last, 1, act="relu6", name=f"features.{i}", **common)(x, train)
        features[stride] = x
        if self.out_strides is not None:
            return select_features(features, self.out_strides, "MobileNetV2")
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, kernel_init=LINEAR_INIT, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


class InvertedResidualV3(nn.Module):
    cfg: V3Block
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = self.cfg
        common = dict(norm_eps=1e-3, norm_momentum=0.01, norm_axis_name=self.norm_axis_name,
                      dtype=self.dtype)
        y, k = x, 0
        if c.expanded != c.in_features:
            y = conv_norm_act(c.expanded, 1, act=c.act, name="block.0", **common)(y, train)
            k = 1
        y = conv_norm_act(c.expanded, c.kernel, c.strides, groups=c.expanded, act=c.act,
                          name=f"block.{k}", **common)(y, train)
        k += 1
        if c.use_se:
            y = SqueezeExcitation(make_divisible(c.expanded // 4), act="relu", gate="hard_sigmoid",
                                  dtype=self.dtype, name=f"block.{k}")(y)
            k += 1
        y = conv_norm_act(c.out_features, 1, act="none", name=f"block.{k}", **common)(y, train)
        return x + y if c.strides == 1 and c.in_features == c.out_features else y


class MobileNetV3(nn.Module):
    blocks: Sequence[V3Block] = V3_LARGE
    last_features: int = 1280   # 1024 for Small
    num_classes: int = 1000
    dropout_rate: float = 0.2
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32
    out_strides: Sequence[int] | None = None  # a backbone: {stride: feature map}, no classifier

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "MobileNetV3")
        common = dict(norm_eps=1e-3, norm_momentum=0.01, norm_axis_name=self.norm_axis_name,
                      dtype=self.dtype)
        x = conv_norm_act(self.blocks[0].in_features, 3, 2, act="hard_swish", name="features.0",
                          **common)(x, train)
        stride = 2
        features = {stride: x}
        for i, cfg in enumerate(self.blocks, start=1):
            x = InvertedResidualV3(cfg, self.norm_axis_name, self.dtype,
                                   name=f"features.{i}")(x, train)
            stride *= cfg.strides
            features[stride] = x
        x = conv_norm_act(6 * self.blocks[-1].out_features, 1, act="hard_swish",
                          name=f"features.{len(self.blocks) + 1}", **common)(x, train)
        features[stride] = x
        if self.out_strides is not None:
            return select_features(features, self.out_strides, "MobileNetV3")
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.last_features, kernel_init=LINEAR_INIT, dtype=self.dtype,
                     name="classifier.0")(x)
        x = nn.hard_swish(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, kernel_init=LINEAR_INIT, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
