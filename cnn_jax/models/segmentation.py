"""FCN (Long et al., 2015) and DeepLabV3 (Chen et al., 2017) in torchvision's layout
(torchvision.models.segmentation.fcn_resnet50 / deeplabv3_resnet50, without the auxiliary
head): a backbone taken by name (`cnn_jax.models.backbones`) at output stride 8 (layer3 and
layer4 dilated), a head on its last feature map, and the logits resized bilinearly to the
input's size as torchvision does (`F.interpolate(..., align_corners=False)`).

- FCN head: 3x3 convolution to in/4 channels, BatchNorm, ReLU, dropout 0.1, 1x1 convolution.
- DeepLabV3 head: ASPP (a 1x1 branch, three 3x3 branches dilated 12, 24, 36, and an image-pool
  branch, 256 channels each, concatenated and projected to 256, dropout 0.5), then a 3x3
  convolution, BatchNorm, ReLU and a 1x1 convolution.

With 21 classes: FCN-ResNet50 32,957,013 parameters, DeepLabV3-ResNet50 39,638,869, as
torchvision 0.29.1's. Module names mirror torchvision's (`backbone`, `classifier`), so
`cnn_jax.transfer` maps torchvision's weights both ways.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import ConvBlock, check_nhwc, resize_bilinear
from cnn_jax.models.backbones import get_backbone


class FCNHead(nn.Module):
    num_classes: int
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = ConvBlock(x.shape[-1] // 4, 3, padding=1, norm="batch", use_bias=False,
                      norm_axis_name=self.norm_axis_name, dtype=self.dtype, name="block")(x, train)
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="out")(x)


class ASPP(nn.Module):
    atrous_rates: Sequence[int] = (12, 24, 36)
    features: int = 256
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = lambda kernel, name, dilation=1: ConvBlock(
            self.features, kernel, padding=dilation if kernel == 3 else 0, dilation=dilation,
            norm="batch", use_bias=False, norm_axis_name=self.norm_axis_name, dtype=self.dtype,
            name=name)
        branches = [conv(1, "branch0")(x, train)]
        branches += [conv(3, f"branch{i + 1}", rate)(x, train)
                     for i, rate in enumerate(self.atrous_rates)]
        pooled = conv(1, "pooling")(jnp.mean(x, axis=(1, 2), keepdims=True), train)
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], self.features)))
        y = conv(1, "project")(jnp.concatenate(branches, axis=-1), train)
        return nn.Dropout(0.5, deterministic=not train)(y)


class DeepLabHead(nn.Module):
    num_classes: int
    atrous_rates: Sequence[int] = (12, 24, 36)
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        common = dict(norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        x = ASPP(self.atrous_rates, name="aspp", **common)(x, train)
        x = ConvBlock(256, 3, padding=1, norm="batch", use_bias=False, name="block",
                      **common)(x, train)
        return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="out")(x)


class SegmentationModel(nn.Module):
    """A backbone's last feature map, a head (`head`: 'fcn' or 'deeplabv3'), and the logits
    resized to the input's H and W: (N, H, W, num_classes), float32."""
    num_classes: int = 21
    head: str = "fcn"
    backbone: str = "resnet50"
    output_stride: int = 8
    atrous_rates: Sequence[int] = (12, 24, 36)  # DeepLabV3's ASPP
    norm_axis_name: str | None = None  # set by the pmap train step: BatchNorm over all devices
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "SegmentationModel")
        common = dict(norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        if self.head not in HEADS:
            raise ValueError(f"Unknown segmentation head {self.head!r}. "
                             f"Valid choices: {', '.join(HEADS)}.")
        features = get_backbone(self.backbone, out_strides=(32,), output_stride=self.output_stride,
                                name="backbone", **common)(x, train)[32]
        if self.head == "fcn":
            y = FCNHead(self.num_classes, name="classifier", **common)(features, train)
        else:
            y = DeepLabHead(self.num_classes, self.atrous_rates, name="classifier",
                            **common)(features, train)
        return resize_bilinear(y.astype(jnp.float32), x.shape[1:3])


HEADS = ("fcn", "deeplabv3")
