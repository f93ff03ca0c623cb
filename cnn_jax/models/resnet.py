"""ResNet-18/34/50/101/152 (He et al., 2016), laid out as torchvision's (v1.5: the stride of a
bottleneck sits on its 3x3 convolution).

`stem='imagenet'`: 7x7/2 convolution and 3x3/2 max pool, for 224x224 inputs.
`stem='cifar'`: one 3x3/1 convolution and no pool, for 32x32 inputs.
The last norm of each residual branch starts at zero (`zero_init_residual`), so every block
starts as the identity (Goyal et al., 2017); parameter counts are unaffected.
"""

from typing import Any, Sequence, Type

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import ConvBlock, check_nhwc, get_activation, global_avg_pool, max_pool


class BasicBlock(nn.Module):
    features: int
    strides: int = 1
    norm: str = "batch"
    act: str = "relu"
    zero_init_residual: bool = True
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        common = dict(norm=self.norm, norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        y = ConvBlock(self.features, 3, self.strides, padding=1, act=self.act, name="conv1",
                      **common)(x, train)
        y = ConvBlock(self.features, 3, 1, padding=1, act="none", norm_scale_init=last_scale,
                      name="conv2", **common)(y, train)
        return get_activation(self.act)(y + _shortcut(x, y, self.strides, common, train))


class BottleneckBlock(nn.Module):
    features: int
    strides: int = 1
    norm: str = "batch"
    act: str = "relu"
    zero_init_residual: bool = True
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        common = dict(norm=self.norm, norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        y = ConvBlock(self.features, 1, 1, padding=0, act=self.act, name="conv1", **common)(x, train)
        y = ConvBlock(self.features, 3, self.strides, padding=1, act=self.act, name="conv2",
                      **common)(y, train)
        y = ConvBlock(self.features * 4, 1, 1, padding=0, act="none", norm_scale_init=last_scale,
                      name="conv3", **common)(y, train)
        return get_activation(self.act)(y + _shortcut(x, y, self.strides, common, train))


def _shortcut(x, y, strides, common, train):
    """Identity, or a 1x1 projection (torchvision's `downsample`) where the shape changes."""
    if x.shape == y.shape:
        return x
    return ConvBlock(y.shape[-1], 1, strides, padding=0, act="none", name="downsample",
                     **common)(x, train)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    block_cls: Type[nn.Module]
    num_classes: int = 1000
    stem: str = "imagenet"
    width: int = 64
    norm: str = "batch"
    act: str = "relu"
    zero_init_residual: bool = True
    norm_axis_name: str | None = None  # set by the pmap train step: BatchNorm over all devices
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "ResNet")
        common = dict(norm=self.norm, act=self.act, norm_axis_name=self.norm_axis_name,
                      dtype=self.dtype)
        if self.stem == "imagenet":
            x = ConvBlock(self.width, 7, 2, padding=3, name="stem", **common)(x, train)
            x = max_pool(x, 3, 2, padding=1)
        elif self.stem == "cifar":
            x = ConvBlock(self.width, 3, 1, padding=1, name="stem", **common)(x, train)
        else:
            raise ValueError(f"Unknown ResNet stem {self.stem!r}. Valid choices: cifar, imagenet.")
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(self.width * 2**i, strides, zero_init_residual=self.zero_init_residual,
                                   name=f"layer{i + 1}_{j}", **common)(x, train)
        x = global_avg_pool(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
