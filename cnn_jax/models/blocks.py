"""Pieces shared by the modern families (MobileNet, EfficientNet, RegNet, ConvNeXt, DenseNet).

Their modules are named after torchvision's module paths (`features.3`, `block.1`, ...), so a
parameter's path joined with dots is torchvision's key (`features.3.block.1.0.weight`) and
weights move between the two without a renaming table (`cnn_jax.transfer.torchvision`).
As backbones (`cnn_jax.models.backbones`), with `out_strides` set, they return
{stride: feature map} (the last map at each stride) and make no classifier.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import ConvBlock

# torchvision's initializations: convolutions He-normal over fan-out, linear layers N(0, 0.01).
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
LINEAR_INIT = nn.initializers.normal(0.01)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """The nearest multiple of `divisor` to `value`, never below 90% of it (the TF MobileNet
    rule torchvision uses for channel counts)."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def select_features(features: dict[int, jax.Array], out_strides: Sequence[int], model: str
                    ) -> dict[int, jax.Array]:
    """A backbone's output: {stride: the last feature map at that stride} for `out_strides`."""
    if not out_strides or any(s not in features for s in out_strides):
        raise ValueError(f"{model} out_strides {tuple(out_strides)!r}: valid strides are "
                         f"{sorted(features)}.")
    return {s: features[s] for s in out_strides}


def conv_norm_act(features: int, kernel_size: int, strides: int = 1, *, act: str, name: str,
                  groups: int = 1, dilation: int = 1, norm: str = "batch",
                  norm_eps: float = 1e-5, norm_momentum: float = 0.1,
                  norm_axis_name: str | None = None, use_bias: bool | None = None,
                  padding: int | None = None, conv_name: str = "0", norm_name: str = "1",
                  dtype: Any = jnp.float32) -> ConvBlock:
    """torchvision's `Conv2dNormActivation`: convolution "0" (padding (k - 1) // 2 * dilation)
    then norm "1" then the activation."""
    return ConvBlock(features, kernel_size, strides,
                     padding=(kernel_size - 1) // 2 * dilation if padding is None else padding,
                     dilation=dilation, groups=groups, norm=norm, act=act, use_bias=use_bias,
                     kernel_init=CONV_INIT, norm_eps=norm_eps, norm_momentum=norm_momentum,
                     norm_axis_name=norm_axis_name, conv_name=conv_name, norm_name=norm_name, dtype=dtype,
                     name=name)
