"""Backbones (cnn_jax.models.backbones): feature maps at strides 4/8/16/32 by one call, ResNet's
stride replaced by dilation, the classifier's parameters under the same names, clear errors;
the features against torchvision's own ResNet (dilated) and VGG (skipped without it, failed
under CI=true)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.models import get_model
from cnn_jax.models.backbones import BACKBONES, get_backbone
from conftest import require
from helpers.torch_reference import randomize_batch_norm_


def abstract(module, shape, batch=2):
    x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
    variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
    return variables, jax.eval_shape(lambda v, x: module.apply(v, x), variables, x)


CHANNELS = {"resnet18": (64, 128, 256, 512), "resnet50": (256, 512, 1024, 2048),
            "vgg11": (256, 512, 512, 512), "vgg16_bn": (256, 512, 512, 512)}


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_features_at_strides_4_to_32(name):
    _, features = abstract(get_backbone(name), (64, 96, 3))
    assert list(features) == [4, 8, 16, 32]
    for (stride, f), channels in zip(features.items(), CHANNELS[name]):
        assert f.shape == (2, 64 // stride, 96 // stride, channels), stride


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_backbone_parameters_are_the_classifiers_without_its_head(name):
    backbone, _ = abstract(get_backbone(name), (64, 64, 3))
    classifier, _ = abstract(get_model(name, num_classes=10), (64, 64, 3))
    shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)
    heads = ("head", "fc1", "fc2")
    expected = {c: {k: v for k, v in tree.items() if k not in heads}
                for c, tree in classifier.items()}
    assert shapes(backbone) == shapes(expected)


@pytest.mark.parametrize("output_stride,sizes", [(32, (16, 8, 4, 2)), (16, (16, 8, 4, 4)),
                                                 (8, (16, 8, 8, 8))])
def test_resnet_output_stride_by_dilation(output_stride, sizes):
    backbone = get_backbone("resnet50", output_stride=output_stride)
    variables, features = abstract(backbone, (64, 64, 3))
    assert [f.shape[1] for f in features.values()] == list(sizes)
    assert [f.shape[-1] for f in features.values()] == [256, 512, 1024, 2048]
    # Dilation changes no parameter.
    plain, _ = abstract(get_backbone("resnet50"), (64, 64, 3))
    assert jax.tree.map(lambda x: x.shape, variables) == jax.tree.map(lambda x: x.shape, plain)
    # The classifier takes the option too (torchvision's replace_stride_with_dilation).
    model = get_model("resnet50", num_classes=5, replace_stride_with_dilation=(False, True, True))
    assert abstract(model, (64, 64, 3))[1].shape == (2, 5)


def test_other_strides_and_errors():
    _, features = abstract(get_backbone("resnet18", out_strides=(2, 32)), (64, 64, 3))
    assert {s: f.shape[1:] for s, f in features.items()} == {2: (32, 32, 64), 32: (2, 2, 512)}
    _, features = abstract(get_backbone("vgg11", out_strides=(1,)), (32, 32, 3))
    assert features[1].shape == (2, 32, 32, 64)
    with pytest.raises(ValueError, match=r"'lenet5' has no multi-scale features.*Valid "
                                         r"backbones: resnet18, .*vgg19_bn"):
        get_backbone("lenet5")
    for bad in ("resnet18_cifar", "unet", "fcn_resnet50"):
        with pytest.raises(ValueError, match="not a backbone"):
            get_backbone(bad)
    with pytest.raises(ValueError,
                       match=r"out_strides \(3,\): valid strides are \[2, 4, 8, 16, 32\]"):
        abstract(get_backbone("resnet18", out_strides=(3,)), (64, 64, 3))
    with pytest.raises(ValueError, match=r"valid strides are \[1, 2, 4, 8, 16, 32\]"):
        abstract(get_backbone("vgg11", out_strides=(64,)), (64, 64, 3))
    with pytest.raises(ValueError, match="needs a ResNet backbone"):
        get_backbone("vgg16", output_stride=8)
    with pytest.raises(ValueError, match=r"output_stride must be one of \[8, 16, 32\]"):
        get_backbone("resnet50", output_stride=4)
    assert set(BACKBONES) >= {"resnet50", "resnet101", "vgg16", "vgg16_bn"}




def _import_backbone(name, classifier_state, shape):
    """A backbone with a torchvision classifier's weights (its head dropped)."""
    from cnn_jax.transfer.torchvision import from_torchvision
    state = {k: v for k, v in classifier_state.items()
             if not k.startswith(("fc.", "classifier."))}
    return state, from_torchvision(state, name, abstract(get_backbone(name), shape)[0])[0]


@pytest.mark.slow
def test_dilated_resnet_and_vgg_features_equal_torchvision():
    torchvision = require("torchvision")
    import torch
    from torchvision.models._utils import IntermediateLayerGetter

    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    # ResNet-50 at output stride 16, against torchvision's replace_stride_with_dilation.
    reference = randomize_batch_norm_(torchvision.models.resnet50(
        weights=None, replace_stride_with_dilation=[False, False, True]), torch, seed=3).eval()
    getter = IntermediateLayerGetter(reference, {"layer1": "4", "layer2": "8", "layer3": "16",
                                                 "layer4": "32"})
    with torch.no_grad():
        expected = {int(k): v.numpy().transpose(0, 2, 3, 1)
                    for k, v in getter(torch.from_numpy(x)).items()}
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    _, variables = _import_backbone("resnet50", state, (32, 32, 3))
    backbone = get_backbone("resnet50", output_stride=16)
    got = jax.jit(backbone.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert expected[32].shape[1:3] == (2, 2)
    for stride, value in expected.items():
        assert np.abs(got[stride] - value).max() <= 1e-4 * np.abs(value).max(), stride

    # VGG-11 with BatchNorm: the last map at each stride is torchvision's `features` output
    # before each max pool (and after the last one).
    reference = randomize_batch_norm_(torchvision.models.vgg11_bn(weights=None), torch,
                                      seed=4).eval()
    cut = {4: 14, 8: 21, 16: 28, 32: 29}  # up to max pools 3, 4, 5 (indices 14, 21, 28); all
    with torch.no_grad():
        expected = {s: reference.features[:i](torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
                    for s, i in cut.items()}
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    _, variables = _import_backbone("vgg11_bn", state, (32, 32, 3))
    got = jax.jit(get_backbone("vgg11_bn").apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    for stride, value in expected.items():
        assert got[stride].shape == value.shape, stride
        assert np.abs(got[stride] - value).max() <= 1e-4 * np.abs(value).max(), stride
