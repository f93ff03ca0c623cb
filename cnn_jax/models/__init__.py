"""The model registry: every architecture by name, with the input size it was designed for.

    model = get_model("resnet18_cifar", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *input_shape("resnet18_cifar"))))

To add a model: write its module (composed from `cnn_jax.layers`) in this folder and add an
entry to `MODELS` below.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

from flax import linen as nn

from cnn_jax.models.alexnet import AlexNet
from cnn_jax.models.botnet import BoTNet
from cnn_jax.models.coatnet import CoAtNet
from cnn_jax.models.convnext import VARIANTS as CONVNEXT_VARIANTS, ConvNeXt
from cnn_jax.models.densenet import DenseNet
from cnn_jax.models.efficientnet import VARIANTS as EFFICIENTNET_VARIANTS, EfficientNet
from cnn_jax.models.lenet import LeNet5
from cnn_jax.models.mobilenet import V3_LARGE, V3_SMALL, MobileNetV2, MobileNetV3
from cnn_jax.models.regnet import RegNet
from cnn_jax.models.resnet import STAGES as RESNET_STAGES, BasicBlock, BottleneckBlock, ResNet
from cnn_jax.models.segmentation import SegmentationModel
from cnn_jax.models.unet import UNet
from cnn_jax.models.vgg import STAGES as VGG_STAGES, VGG


class ModelEntry(NamedTuple):
    build: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]  # (H, W, C) the architecture was designed for
    # What the logits are: 'classification' (N, num_classes), 'segmentation' (N, H, W,
    # num_classes) at the input's resolution.
    task: str = "classification"


# Keywords a registered variant sets (its published default) that a run may still change;
# every other keyword of a variant (depths, widths, layouts) defines the architecture.
TUNABLE = frozenset({"dropout_rate", "stochastic_depth_rate"})

IMAGENET = (224, 224, 3)
CIFAR = (32, 32, 3)

MODELS: dict[str, ModelEntry] = {
    "lenet5": ModelEntry(LeNet5, (32, 32, 1)),
    "alexnet": ModelEntry(AlexNet, IMAGENET),
}
for _depth, _layers in VGG_STAGES.items():
    for _bn in (False, True):
        _name = f"vgg{_depth}" + ("_bn" if _bn else "")
        _vgg = functools.partial(VGG, layers=_layers, batch_norm=_bn)
        MODELS[_name] = ModelEntry(_vgg, IMAGENET)
        MODELS[_name + "_cifar"] = ModelEntry(
            functools.partial(_vgg, pool_size=1, hidden_features=512), CIFAR)
for _depth, (_stages, _block) in RESNET_STAGES.items():
    _resnet = functools.partial(ResNet, stage_sizes=_stages, block_cls=_block)
    MODELS[f"resnet{_depth}"] = ModelEntry(functools.partial(_resnet, stem="imagenet"), IMAGENET)
    MODELS[f"resnet{_depth}_cifar"] = ModelEntry(functools.partial(_resnet, stem="cifar"), CIFAR)
MODELS["unet"] = ModelEntry(UNet, (256, 256, 1), task="segmentation")
for _head in ("fcn", "deeplabv3"):
    for _depth in (50, 101):
        MODELS[f"{_head}_resnet{_depth}"] = ModelEntry(
            functools.partial(SegmentationModel, head=_head, backbone=f"resnet{_depth}"),
            (520, 520, 3), task="segmentation")
MODELS["resnext50_32x4d"] = ModelEntry(functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock, groups=32, width_per_group=4),
    IMAGENET)
MODELS["wide_resnet50_2"] = ModelEntry(functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock, width_per_group=128), IMAGENET)

# The modern families, named as torchvision names them; `_cifar` variants keep more resolution.
MODELS["mobilenet_v2"] = ModelEntry(MobileNetV2, IMAGENET)
# The CIFAR variant of kuangliu/pytorch-cifar: stride 1 in the stem and the second stage.
MODELS["mobilenet_v2_cifar"] = ModelEntry(functools.partial(
    MobileNetV2, stem_strides=1, stage_strides=(1, 1, 2, 2, 1, 2, 1)), CIFAR)
MODELS["mobilenet_v3_large"] = ModelEntry(
    functools.partial(MobileNetV3, blocks=V3_LARGE, last_features=1280), IMAGENET)
MODELS["mobilenet_v3_small"] = ModelEntry(
    functools.partial(MobileNetV3, blocks=V3_SMALL, last_features=1024), IMAGENET)
for _v, (_width, _depth, _dropout) in EFFICIENTNET_VARIANTS.items():
    MODELS[f"efficientnet_{_v}"] = ModelEntry(functools.partial(
        EfficientNet, width_mult=_width, depth_mult=_depth, dropout_rate=_dropout), IMAGENET)
MODELS["regnet_y_400mf"] = ModelEntry(RegNet, IMAGENET)
for _v, (_widths, _depths, _rate) in CONVNEXT_VARIANTS.items():
    _convnext = functools.partial(ConvNeXt, widths=_widths, depths=_depths,
                                  stochastic_depth_rate=_rate)
    MODELS[f"convnext_{_v}"] = ModelEntry(_convnext, IMAGENET)
    MODELS[f"convnext_{_v}_cifar"] = ModelEntry(functools.partial(_convnext, stem_patch=1), CIFAR)
MODELS["densenet121"] = ModelEntry(DenseNet, IMAGENET)
# CNN + self-attention hybrids. BoTNet's position encodings fit one input size.
MODELS["botnet50"] = ModelEntry(BoTNet, IMAGENET)
MODELS["botnet_cifar"] = ModelEntry(functools.partial(
    BoTNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, stem="cifar"), CIFAR)
MODELS["coatnet_0"] = ModelEntry(CoAtNet, IMAGENET)
MODELS["coatnet_cifar"] = ModelEntry(functools.partial(
    CoAtNet, depths=(1, 1, 2, 1), widths=(32, 64, 128, 256), stem_width=32, stem_strides=1),
    CIFAR)


def _entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Valid choices: {', '.join(sorted(MODELS))}.")
    return MODELS[name]


def model_options(name: str) -> list[str]:
    """The keyword arguments `get_model(name, ...)` accepts."""
    build = _entry(name).build
    cls = build.func if isinstance(build, functools.partial) else build
    fixed = set(build.keywords) - TUNABLE if isinstance(build, functools.partial) else set()
    return sorted(f.name for f in dataclasses.fields(cls)
                  if f.init and f.name not in ("parent", "name") and f.name not in fixed)


def get_model(name: str, *, num_classes: int, **kwargs) -> nn.Module:
    """The registered architecture `name` with `num_classes` outputs; `kwargs` set its options
    (see `model_options(name)`)."""
    entry = _entry(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    valid = model_options(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for model {name!r}. "
                         f"Valid options: {', '.join(valid)}.")
    return entry.build(num_classes=num_classes, **kwargs)


def input_shape(name: str) -> tuple[int, int, int]:
    """The (H, W, C) input the architecture was designed for."""
    return _entry(name).input_shape


def model_task(name: str) -> str:
    """What the model's logits are for: 'classification' ((N, num_classes)) or
    'segmentation' ((N, H, W, num_classes), the input's H and W)."""
    return _entry(name).task


__all__ = ["MODELS", "get_model", "input_shape", "model_options", "model_task", "LeNet5",
           "AlexNet", "VGG", "ResNet", "BasicBlock", "BottleneckBlock", "UNet",
           "SegmentationModel", "MobileNetV2", "MobileNetV3", "EfficientNet", "RegNet",
           "ConvNeXt", "DenseNet", "BoTNet", "CoAtNet"]
