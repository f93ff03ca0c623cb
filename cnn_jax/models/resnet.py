"""ResNet-18/34/50/101/152 (He et al., 2016), laid out as torchvision's (v1.5: the stride of a
bottleneck sits on its 3x3 convolution).

`stem='imagenet'`: 7x7/2 convolution and 3x3/2 max pool, for 224x224 inputs.
`stem='cifar'`: one 3x3/1 convolution and no pool, for 32x32 inputs.
The last norm of each residual branch starts at zero (`zero_init_residual`), so every block
starts as the identity (Goyal et al., 2017); parameter counts are unaffected.

As a backbone (`cnn_jax.models.backbones.get_backbone`): `out_strides` returns the feature
maps {stride: (N, H/stride, W/stride, C)} instead of logits, and no classifier is made
(stride 2: the stem's convolution; 4, 8, 16, 32: the end of layer1..layer4).
`replace_stride_with_dilation` (torchvision's option, one flag per layer2..layer4) keeps a
stage at its input's resolution and dilates its 3x3 convolutions instead; the keys of
`out_strides` stay the strides the stages have without dilation.
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
    dilation: int = 1  # of both 3x3 convolutions (torchvision's BasicBlock has none)
    groups: int = 1            # only 1: as torchvision, grouped and wide variants are bottlenecks
    width_per_group: int = 64
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.groups != 1 or self.width_per_group != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64 (ResNeXt "
                             "and Wide ResNet use bottleneck blocks).")
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        common = dict(norm=self.norm, norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        d = self.dilation
        y = ConvBlock(self.features, 3, self.strides, padding=d, dilation=d, act=self.act,
                      name="conv1", **common)(x, train)
        y = ConvBlock(self.features, 3, 1, padding=d, dilation=d, act="none",
                      norm_scale_init=last_scale, name="conv2", **common)(y, train)
        return get_activation(self.act)(y + _shortcut(x, y, self.strides, common, train))


class BottleneckBlock(nn.Module):
    features: int
    strides: int = 1
    norm: str = "batch"
    act: str = "relu"
    zero_init_residual: bool = True
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32
    dilation: int = 1  # of the 3x3 convolution
    groups: int = 1           # of the 3x3 convolution: ResNeXt's cardinality
    width_per_group: int = 64  # the 3x3's width is features * width_per_group / 64 * groups
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        common = dict(norm=self.norm, norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        width = int(self.features * (self.width_per_group / 64.0)) * self.groups
        y = ConvBlock(width, 1, 1, padding=0, act=self.act, name="conv1", **common)(x, train)
        y = ConvBlock(width, 3, self.strides, padding=self.dilation, dilation=self.dilation,
                      groups=self.groups, act=self.act, name="conv2", **common)(y, train)
        y = ConvBlock(self.features * 4, 1, 1, padding=0, act="none", norm_scale_init=last_scale,
                      name="conv3", **common)(y, train)
        return get_activation(self.act)(y + _shortcut(x, y, self.strides, common, train))


STAGES = {  # depth -> (blocks per stage, block)
    18: ((2, 2, 2, 2), BasicBlock),
    34: ((3, 4, 6, 3), BasicBlock),
    50: ((3, 4, 6, 3), BottleneckBlock),
    101: ((3, 4, 23, 3), BottleneckBlock),
    152: ((3, 8, 36, 3), BottleneckBlock),
}


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
    replace_stride_with_dilation: Sequence[bool] | None = None  # layer2..: None, all False
    out_strides: Sequence[int] | None = None  # a backbone: {stride: feature map}, no classifier
    groups: int = 1             # ResNeXt: 32 groups of width_per_group 4 (resnext50_32x4d)
    width_per_group: int = 64   # Wide ResNet: 128 (wide_resnet50_2)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | dict[int, jax.Array]:
        check_nhwc(x, "ResNet")
        common = dict(norm=self.norm, act=self.act, norm_axis_name=self.norm_axis_name,
                      dtype=self.dtype)
        dilate = self.replace_stride_with_dilation
        dilate = (False,) * (len(self.stage_sizes) - 1) if dilate is None else tuple(dilate)
        if len(dilate) != len(self.stage_sizes) - 1:
            raise ValueError(f"replace_stride_with_dilation needs {len(self.stage_sizes) - 1} "
                             f"flags (layer2..), got {self.replace_stride_with_dilation!r}.")
        features = {}  # nominal stride -> the last feature map at it
        if self.stem == "imagenet":
            x = ConvBlock(self.width, 7, 2, padding=3, name="stem", **common)(x, train)
            features[2] = x
            x = max_pool(x, 3, 2, padding=1)
            stride = 4
        elif self.stem == "cifar":
            x = ConvBlock(self.width, 3, 1, padding=1, name="stem", **common)(x, train)
            stride = 1
        else:
            raise ValueError(f"Unknown ResNet stem {self.stem!r}. Valid choices: cifar, imagenet.")
        if self.out_strides is not None:
            valid = sorted({*features, *(stride * 2**i for i in range(len(self.stage_sizes)))})
            if not self.out_strides or any(s not in valid for s in self.out_strides):
                raise ValueError(f"ResNet out_strides {tuple(self.out_strides)!r}: valid strides "
                                 f"are {valid}.")
        dilation = 1
        for i, num_blocks in enumerate(self.stage_sizes):
            stage_strides, first_dilation = (2 if i > 0 else 1), dilation
            if i > 0 and dilate[i - 1]:
                dilation, stage_strides = dilation * 2, 1  # as torchvision's _make_layer
            for j in range(num_blocks):
                x = self.block_cls(self.width * 2**i, stage_strides if j == 0 else 1,
                                   zero_init_residual=self.zero_init_residual,
                                   dilation=first_dilation if j == 0 else dilation,
                                   groups=self.groups, width_per_group=self.width_per_group,
                                   name=f"layer{i + 1}_{j}", **common)(x, train)
            features[stride * 2**i] = x
        if self.out_strides is not None:
            return {s: features[s] for s in self.out_strides}
        x = global_avg_pool(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
