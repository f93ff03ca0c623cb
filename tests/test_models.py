"""The architectures: exact parameter counts, output shapes, input errors. Shapes come from
`jax.eval_shape`, so not even VGG's 138M parameters are allocated."""

import jax
import jax.numpy as jnp
import pytest

from cnn_jax.models import MODELS, get_model, input_shape, model_options, model_task

# torchvision's figures (1000 classes); LeNet-5 at 32x32x1 with 10 classes.
TORCHVISION_PARAMS = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}


def abstract_variables(model, shape, batch=2):
    x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def count(tree):
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_equals_torchvision(name):
    variables = abstract_variables(get_model(name, num_classes=1000), input_shape(name))
    assert count(variables["params"]) == TORCHVISION_PARAMS[name]


def test_lenet5_parameter_count():
    variables = abstract_variables(get_model("lenet5", num_classes=10), (32, 32, 1))
    assert count(variables["params"]) == 61_706
    # C1 156, C3 2,416, C5 48,120, F6 10,164, output 850.
    per_layer = {k: count(v) for k, v in variables["params"].items()}
    assert per_layer == {"C1": 156, "C3": 2416, "C5": 48120, "F6": 10164, "head": 850}


def test_resnet18_cifar_parameter_count():
    # The widely quoted 11,173,962 of ResNet-18 with a 3x3 stem, no max-pool, 10 classes.
    variables = abstract_variables(get_model("resnet18_cifar", num_classes=10), (32, 32, 3))
    assert count(variables["params"]) == 11_173_962


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_at_input_size(name):
    model = get_model(name, num_classes=7)
    variables = abstract_variables(model, input_shape(name), batch=3)
    x = jax.ShapeDtypeStruct((3, *input_shape(name)), jnp.float32)
    for train in (False, True):
        out = jax.eval_shape(
            lambda v, x: model.apply(v, x, train=train, rngs={"dropout": jax.random.key(1)},
                                     mutable=["batch_stats"] if train else False), variables, x)
        logits = out[0] if train else out
        expected = (3, *input_shape(name)[:2], 7) if model_task(name) == "segmentation" else (3, 7)
        assert logits.shape == expected and logits.dtype == jnp.float32


def test_batchnorm_models_have_batch_stats_and_others_do_not():
    assert "batch_stats" in abstract_variables(get_model("resnet18_cifar", num_classes=10), (32, 32, 3))
    assert "batch_stats" in abstract_variables(get_model("vgg11_bn_cifar", num_classes=10), (32, 32, 3))
    assert "batch_stats" not in abstract_variables(get_model("vgg11_cifar", num_classes=10), (32, 32, 3))
    assert "batch_stats" not in abstract_variables(get_model("lenet5", num_classes=10), (32, 32, 1))


@pytest.mark.parametrize("depth,stages,last", [
    (18, (2, 2, 2, 2), "conv2"), (34, (3, 4, 6, 3), "conv2"), (50, (3, 4, 6, 3), "conv3"),
    (101, (3, 4, 23, 3), "conv3"), (152, (3, 8, 36, 3), "conv3")])
def test_every_residual_branch_starts_at_zero(depth, stages, last):
    """The last norm of every block's branch (basic: conv2, bottleneck: conv3) has scale 0, so
    each block starts as relu(shortcut); every other norm (the stem's, the branch's first ones,
    the projections') has scale 1. `zero_init_residual=False` makes them all 1. Width 2 keeps
    ResNet-152 cheap; the block structure is the full-width one."""
    for zero in (True, False):
        model = get_model(f"resnet{depth}_cifar", num_classes=3, width=2, zero_init_residual=zero)
        params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
        blocks = [f"layer{i + 1}_{j}" for i, n in enumerate(stages) for j in range(n)]
        assert sorted(k for k in params if k.startswith("layer")) == sorted(blocks)
        for block in blocks:
            for conv, modules in params[block].items():
                scale = modules["norm"]["scale"]
                assert scale.size and jnp.all(scale == (0 if zero and conv == last else 1)), (block, conv)
        assert jnp.all(params["stem"]["norm"]["scale"] == 1)


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown model 'resnet19'.*resnet18.*vgg16_bn"):
        get_model("resnet19", num_classes=10)


def test_unknown_model_option_lists_valid_options():
    assert "act" in model_options("lenet5")
    with pytest.raises(ValueError, match=r"Unknown option.*'activation'.*Valid options: act"):
        get_model("lenet5", num_classes=10, activation="tanh")


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        get_model("lenet5", num_classes=bad)


def test_wrong_rank_input():
    model = get_model("resnet18_cifar", num_classes=10)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\).*rank 3"):
        abstract_variables(model, (32, 32))


def test_lenet_wrong_size_says_what_to_do():
    with pytest.raises(ValueError, match="LeNet-5 takes 32x32 images, got 28x28; pad"):
        abstract_variables(get_model("lenet5", num_classes=10), (28, 28, 1))


def test_input_too_small_for_alexnet():
    with pytest.raises(ValueError, match="too small"):
        abstract_variables(get_model("alexnet", num_classes=10), (32, 32, 3))


def test_channel_count_fixed_by_parameters():
    model = get_model("lenet5", num_classes=10)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(Exception, match="shape"):
        model.apply(variables, jnp.zeros((1, 32, 32, 3)))


def test_unknown_resnet_stem():
    model = MODELS["resnet18"].build(num_classes=10, stem="tiny")
    with pytest.raises(ValueError, match="Unknown ResNet stem 'tiny'.*cifar, imagenet"):
        abstract_variables(model, (32, 32, 3))
