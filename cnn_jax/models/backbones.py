"""Backbones: the image classifiers that return their feature maps at several strides (timm's
`features_only`), for segmentation and detection heads, which take them by name.

    backbone = get_backbone("resnet50")                   # strides 4, 8, 16, 32
    feats = backbone.apply(variables, images, train=False)  # {4: (N, H/4, W/4, 256), ...,
                                                            #  32: (N, H/32, W/32, 2048)}
    backbone = get_backbone("resnet50", out_strides=(32,), output_stride=8)  # DeepLab's

A backbone's parameters are its classifier's without the classifier head, under the same
names, so the classifier's weights (`cnn_jax.transfer`) initialize it.
`output_stride` 16 or 8 (ResNets only) replaces the stride of layer4 (and layer3) by
dilation, as torchvision's `replace_stride_with_dilation`; the keys of the returned dict stay
the strides without dilation (with output_stride 8, `32` is layer4's map at H/8).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

from flax import linen as nn

from cnn_jax.models.convnext import VARIANTS as CONVNEXT_VARIANTS, ConvNeXt
from cnn_jax.models.densenet import DenseNet
from cnn_jax.models.efficientnet import VARIANTS as EFFICIENTNET_VARIANTS, EfficientNet
from cnn_jax.models.mobilenet import V3_LARGE, V3_SMALL, MobileNetV2, MobileNetV3
from cnn_jax.models.regnet import RegNet
from cnn_jax.models.resnet import STAGES as RESNET_STAGES, BottleneckBlock, ResNet
from cnn_jax.models.vgg import STAGES as VGG_STAGES, VGG

DEFAULT_STRIDES = (4, 8, 16, 32)
DILATION = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}

BACKBONES: dict[str, Callable[..., nn.Module]] = {}
for _depth, (_stages, _block) in RESNET_STAGES.items():
    BACKBONES[f"resnet{_depth}"] = functools.partial(ResNet, stage_sizes=_stages,
                                                     block_cls=_block, stem="imagenet")
for _depth, _layers in VGG_STAGES.items():
    BACKBONES[f"vgg{_depth}"] = functools.partial(VGG, layers=_layers, batch_norm=False)
    BACKBONES[f"vgg{_depth}_bn"] = functools.partial(VGG, layers=_layers, batch_norm=True)
BACKBONES["resnext50_32x4d"] = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock, groups=32, width_per_group=4)
BACKBONES["wide_resnet50_2"] = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock, width_per_group=128)
BACKBONES["mobilenet_v2"] = MobileNetV2
BACKBONES["mobilenet_v3_large"] = functools.partial(MobileNetV3, blocks=V3_LARGE)
BACKBONES["mobilenet_v3_small"] = functools.partial(MobileNetV3, blocks=V3_SMALL,
                                                    last_features=1024)
for _v, (_width, _depth, _dropout) in EFFICIENTNET_VARIANTS.items():
    BACKBONES[f"efficientnet_{_v}"] = functools.partial(EfficientNet, width_mult=_width,
                                                        depth_mult=_depth)
BACKBONES["regnet_y_400mf"] = RegNet
for _v, (_widths, _depths, _rate) in CONVNEXT_VARIANTS.items():
    BACKBONES[f"convnext_{_v}"] = functools.partial(ConvNeXt, widths=_widths, depths=_depths)
BACKBONES["densenet121"] = DenseNet


def get_backbone(name: str, /, out_strides: Sequence[int] = DEFAULT_STRIDES,
                 output_stride: int = 32, **options) -> nn.Module:
    """The registered model `name` as a backbone: `apply(variables, images, train=...)`
    returns {stride: feature map} for each of `out_strides`. `options` go to the model
    (`norm_axis_name`, `dtype`, `width`, ..., a Flax `name`)."""
    if name not in BACKBONES:
        raise ValueError(f"Model {name!r} has no multi-scale features (it is not a backbone). "
                         f"Valid backbones: {', '.join(BACKBONES)}.")
    if output_stride not in DILATION:
        raise ValueError(f"Backbone output_stride must be one of {sorted(DILATION)}, got "
                         f"{output_stride!r}.")
    if output_stride != 32:
        if not name.startswith(("resnet", "resnext", "wide_resnet")):
            raise ValueError(f"output_stride={output_stride} (dilation) needs a ResNet backbone; "
                             f"{name!r} has only output_stride 32.")
        options["replace_stride_with_dilation"] = DILATION[output_stride]
    return BACKBONES[name](out_strides=tuple(out_strides), **options)
