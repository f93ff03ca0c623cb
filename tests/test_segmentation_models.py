"""Segmentation models: the transposed convolution (against NumPy and XLA's own, outputs and
gradients), U-Net (the paper's layout counted by hand, shapes, both up-samplings, bad input),
FCN-ResNet50 and DeepLabV3-ResNet50 (torchvision's parameter counts, shapes, bilinear
up-sampling equal to PyTorch's) and their torchvision weights (parity, export, an ImageNet
classifier as backbone; skipped without torchvision)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn_jax import layers, ops
from cnn_jax.models import get_model, model_task
from conftest import require
from helpers.torch_reference import randomize_batch_norm_


def count(tree):
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def abstract_variables(model, shape, batch=1):
    x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


# ---- the transposed convolution ------------------------------------------------------------

def numpy_conv_transpose(x, kernel, strides, padding):
    """PyTorch's ConvTranspose2d by its definition: input (i, j) adds x[i, j] @ kernel[a, b]
    at output (i*s + a - p, j*s + b - p)."""
    n, h, w, _ = x.shape
    kh, kw, _, o = kernel.shape
    (sh, sw), (ph, pw) = strides, padding
    full = np.zeros((n, (h - 1) * sh + kh, (w - 1) * sw + kw, o))
    for i in range(h):
        for j in range(w):
            full[:, i * sh:i * sh + kh, j * sw:j * sw + kw] += np.einsum(
                "nc,abco->nabo", x[:, i, j], kernel)
    return full[:, ph:full.shape[1] - ph, pw:full.shape[2] - pw]


CONV_T_CASES = [((2, 2), (2, 2), (0, 0)),   # U-Net's up-convolution: the fast path
                ((3, 2), (3, 2), (0, 0)),   # rectangular, still non-overlapping
                ((3, 3), (2, 2), (1, 1)),   # overlapping windows, padding: the plain path
                ((4, 4), (2, 2), (1, 1)),
                ((2, 3), (1, 2), (0, 1))]


@pytest.mark.parametrize("kernel_size,strides,padding", CONV_T_CASES)
@pytest.mark.parametrize("fast", [True, False])
def test_conv_transpose_matches_numpy(kernel_size, strides, padding, fast):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    kernel = rng.normal(size=(*kernel_size, 3, 6)).astype(np.float32)
    got = ops.conv_transpose(jnp.asarray(x), jnp.asarray(kernel), strides, padding, fast=fast)
    np.testing.assert_allclose(got, numpy_conv_transpose(x, kernel, strides, padding),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [(2, 2), (3, 2)])
def test_fast_conv_transpose_equals_xla_and_its_gradients(kernel_size):
    """The phase-matmul form against XLA's transposed convolution (`lax.conv_transpose`, what
    flax's ConvTranspose runs; its kernel is flipped relative to PyTorch's)."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 4))
    kernel = jax.random.normal(jax.random.key(1), (*kernel_size, 4, 3))
    xla = lambda x, k: lax.conv_transpose(x, k[::-1, ::-1], kernel_size, "VALID",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    fast = lambda x, k: ops.conv_transpose(x, k, kernel_size, fast=True)
    y, fast_vjp = jax.vjp(fast, x, kernel)
    y_ref, ref_vjp = jax.vjp(xla, x, kernel)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), y.shape)
    for got, expected in zip(fast_vjp(g), ref_vjp(g)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_conv_transpose_block_against_torch():
    torch = require("torch")
    block = layers.ConvTranspose(5, 2, 2)
    x = np.random.default_rng(0).normal(size=(2, 4, 3, 3)).astype(np.float32)
    variables = block.init(jax.random.key(0), jnp.asarray(x))
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # a non-zero bias
    reference = torch.nn.ConvTranspose2d(3, 5, 2, stride=2)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(
            np.asarray(variables["params"]["kernel"]).transpose(2, 3, 0, 1).copy()))
        reference.bias.copy_(torch.from_numpy(np.array(variables["params"]["bias"])))
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = block.apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_conv_transpose_bad_padding():
    with pytest.raises(ValueError, match="ConvTranspose padding"):
        layers.ConvTranspose(4, 2, 2, padding=2).init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))


# ---- U-Net ---------------------------------------------------------------------------------

def conv_params(c_in, c_out, k):
    return k * k * c_in * c_out + c_out


def paper_unet_params(in_channels, num_classes):
    """Ronneberger et al. 2015, Fig. 1, layer by layer: two 3x3 convolutions per level
    (64..1024 channels), 2x2 up-convolutions halving the channels, a 1x1 convolution last."""
    channels = [64, 128, 256, 512, 1024]
    total, c_in = 0, in_channels
    for c in channels:
        total += conv_params(c_in, c, 3) + conv_params(c, c, 3)
        c_in = c
    for c in reversed(channels[:-1]):
        total += conv_params(2 * c, c, 2)                              # up-convolution
        total += conv_params(2 * c, c, 3) + conv_params(c, c, 3)       # after the concatenation
    return total + conv_params(64, num_classes, 1)


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_unet_classic_layout_parameter_count(upsample):
    model = get_model("unet", num_classes=2, upsample=upsample)
    variables = abstract_variables(model, (256, 256, 1))
    assert count(variables["params"]) == paper_unet_params(1, 2) == 31_030_658
    assert "batch_stats" not in variables
    assert variables["params"]["bottom_conv2"]["conv"]["kernel"].shape == (3, 3, 1024, 1024)


def test_unet_width_and_batch_norm():
    variables = abstract_variables(get_model("unet", num_classes=3, width=16, norm="batch"),
                                   (64, 64, 3))
    params = variables["params"]
    assert params["down1_conv1"]["conv"]["kernel"].shape == (3, 3, 3, 16)
    assert params["bottom_conv1"]["conv"]["kernel"].shape == (3, 3, 128, 256)
    assert params["up4"]["kernel"].shape == (2, 2, 256, 128)
    assert "bias" not in params["down1_conv1"]["conv"]  # BatchNorm's shift replaces it
    assert variables["batch_stats"]["down1_conv1"]["norm"]["mean"].shape == (16,)
    assert model_task("unet") == "segmentation" and model_task("resnet18") == "classification"


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_unet_logits_at_input_resolution(upsample):
    model = get_model("unet", num_classes=3, width=4, depth=2, upsample=upsample, norm="batch")
    x = jax.random.normal(jax.random.key(0), (2, 16, 12, 1))

    @jax.jit
    def run(x):
        variables = model.init(jax.random.key(1), x)
        train_logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return model.apply(variables, x, train=False), train_logits

    for logits in run(x):
        assert logits.shape == (2, 16, 12, 3) and logits.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(logits))) and float(jnp.std(logits)) > 0


def test_unet_up_convolutions_skip_xla_transposed_convolution():
    """U-Net's default up-sampling takes the phase-matmul path: its jaxpr, gradient included,
    has no convolution of a zero-dilated input (what XLA's slow transposed convolution is)."""
    model = get_model("unet", num_classes=2, width=4, depth=2)
    x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    params = abstract_variables(model, (8, 8, 1))["params"]
    loss = lambda p, x: model.apply({"params": p}, x).sum()
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params, x))
    assert "conv_general_dilated" in jaxpr and "lhs_dilation=(2, 2)" not in jaxpr
    slow = layers.ConvTranspose(2, fast=False)
    jaxpr = str(jax.make_jaxpr(lambda x: slow.init_with_output(jax.random.key(0), x))(x))
    assert "lhs_dilation=(2, 2)" in jaxpr  # the assertion above can fail


def test_unet_bad_input():
    model = get_model("unet", num_classes=2, width=4)
    with pytest.raises(ValueError, match="divisible by 16; got an input of 20x32"):
        abstract_variables(model, (20, 32, 1))
    with pytest.raises(ValueError, match="Unknown U-Net upsample 'deconv'.*resize, transpose"):
        abstract_variables(get_model("unet", num_classes=2, upsample="deconv"), (32, 32, 1))


# ---- FCN and DeepLabV3 ---------------------------------------------------------------------

# torchvision 0.29.1, num_classes=21, aux_loss=False, weights=None, weights_backbone=None.
TORCHVISION_PARAMS = {"fcn_resnet50": 32_957_013, "deeplabv3_resnet50": 39_638_869,
                      "fcn_resnet101": 51_949_141, "deeplabv3_resnet101": 58_630_997}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_segmentation_parameter_count_equals_torchvision(name):
    model = get_model(name, num_classes=21)
    variables = abstract_variables(model, (64, 64, 3))
    assert count(variables["params"]) == TORCHVISION_PARAMS[name]
    assert model_task(name) == "segmentation"
    # Logits at the input's size, whatever it is (the stride-8 map is resized bilinearly).
    for train in (False, True):
        out = jax.eval_shape(
            lambda v, x: model.apply(v, x, train=train, rngs={"dropout": jax.random.key(0)},
                                     mutable=["batch_stats"] if train else False),
            variables, jax.ShapeDtypeStruct((2, 67, 45, 3), jnp.float32))
        logits = out[0] if train else out
        assert logits.shape == (2, 67, 45, 21) and logits.dtype == jnp.float32


@pytest.mark.parametrize("in_hw,out_hw", [((8, 8), (64, 64)), ((7, 9), (20, 33)),
                                          ((9, 9), (65, 67)), ((1, 1), (5, 4)),
                                          ((12, 10), (7, 5))])  # the last one down-samples
def test_resize_bilinear_matches_torch_interpolate(in_hw, out_hw):
    torch = require("torch")
    x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), size=out_hw, mode="bilinear",
        align_corners=False).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(layers.resize_bilinear(jnp.asarray(x), out_hw), expected,
                               rtol=1e-5, atol=1e-5)


# ---- torchvision's weights -----------------------------------------------------------------



def torchvision_model(name, seed):
    """torchvision's own segmentation model with random weights and BatchNorm statistics."""
    torchvision = require("torchvision")
    import torch
    torch.manual_seed(seed)
    model = getattr(torchvision.models.segmentation, name)(
        num_classes=21, aux_loss=False, weights=None, weights_backbone=None)
    return randomize_batch_norm_(model, torch, seed).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_resnet50"])
def test_imported_torchvision_segmentation_gives_its_logits(name):
    import torch

    from cnn_jax.transfer import import_torchvision, to_torchvision

    reference = torchvision_model(name, seed=0)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 72)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x))["out"].numpy().transpose(0, 2, 3, 1)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}

    aux = {"aux_classifier.0.weight": np.zeros((256, 1024, 3, 3), np.float32)}
    model, variables, report = import_torchvision({**state, **aux}, name, num_classes=21)
    assert "aux_classifier.0.weight" in report.ignored  # the pretrained files have one
    report.ignored.remove("aux_classifier.0.weight")
    got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
    assert got.shape == (2, 64, 72, 21)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert report.reinitialized == [] and all(k.endswith("num_batches_tracked")
                                              for k in report.ignored)

    # The export is torchvision's state dict, key for key (its order) and bit for bit, and
    # torchvision loads it strictly.
    exported = to_torchvision(variables, name)
    assert list(exported) == list(state)
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            assert np.array_equal(exported[key], value), key
    fresh = torchvision_model(name, seed=1)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    with torch.no_grad():
        np.testing.assert_array_equal(fresh(torch.from_numpy(x))["out"].numpy(),
                                      expected.transpose(0, 3, 1, 2))


def test_imagenet_classifier_initializes_the_segmentation_backbone():
    torchvision = require("torchvision")
    import torch

    from cnn_jax.transfer import import_torchvision, to_torchvision

    classifier = randomize_batch_norm_(torchvision.models.resnet50(weights=None), torch, seed=2)
    state = {k: v.numpy() for k, v in classifier.state_dict().items()}
    model, variables, report = import_torchvision(state, "fcn_resnet50", num_classes=3,
                                                  reinit=("classifier",),
                                                  input_shape=(64, 64, 3))
    # The backbone is the classifier's, array for array; the head is fresh; fc.* unused.
    exported = to_torchvision(variables, "fcn_resnet50")
    for key, value in state.items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            assert np.array_equal(exported[f"backbone.{key}"], value), key
    assert {k for k in report.ignored if not k.endswith("num_batches_tracked")} == {
        "fc.weight", "fc.bias"}
    assert variables["params"]["classifier"]["out"]["kernel"].shape == (1, 1, 512, 3)
    assert sorted(set(p.split("/")[1] for p in report.reinitialized)) == ["classifier"]
    head_norm = variables["batch_stats"]["classifier"]["block"]["norm"]
    assert np.all(np.asarray(head_norm["mean"]) == 0) and np.all(np.asarray(head_norm["var"]) == 1)
    # Without reinit the missing head is an error that says what to do.
    with pytest.raises(ValueError, match=r"reinit=\('classifier',\)"):
        import_torchvision(state, "fcn_resnet50", num_classes=3, input_shape=(64, 64, 3))


def test_unet_equals_its_pytorch_twin():
    """benchmarks/torch_models.py's U-Net (written from the paper, independently) with
    cnn_jax's weights computes the same logits: the layout, the skip order and the
    up-convolution agree; the parameters agree tensor by tensor."""
    torch = require("torch")
    from benchmarks import torch_models

    model = get_model("unet", num_classes=3, width=4, depth=2)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.asarray(x))
    params = jax.tree.map(np.asarray, variables["params"])
    twin = torch_models.build("unet", num_classes=3, width=4, depth=2).eval()
    modules = {"down.0": "down1", "down.1": "down2", "bottom": "bottom", "up_convs.0": "up2",
               "up_convs.1": "up1"}
    state = {}
    for prefix, name in modules.items():
        for index, conv in (("0", "conv1"), ("2", "conv2")):
            p = params[f"{name}_{conv}"]["conv"]
            state[f"{prefix}.{index}.weight"] = p["kernel"].transpose(3, 2, 0, 1)
            state[f"{prefix}.{index}.bias"] = p["bias"]
    for j, name in enumerate(("up2", "up1")):  # ConvTranspose2d weight: (in, out, kh, kw)
        state[f"up.{j}.weight"] = params[name]["kernel"].transpose(2, 3, 0, 1)
        state[f"up.{j}.bias"] = params[name]["bias"]
    state["head.weight"] = params["head"]["conv"]["kernel"].transpose(3, 2, 0, 1)
    state["head.bias"] = params["head"]["conv"]["bias"]
    twin.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()},
                         strict=True)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(jax.jit(model.apply)(variables, jnp.asarray(x)), expected,
                               rtol=1e-4, atol=1e-5)
    # The benchmark's sizes: the same parameter count.
    big = abstract_variables(get_model("unet", num_classes=10, width=16), (128, 128, 1))
    assert count(big["params"]) == sum(
        p.numel() for p in torch_models.build("unet", num_classes=10, width=16).parameters())
