"""cnn_jax.explain: against independent references (finite differences, Flax's own
capture_intermediates, CAM's closed form, plain loops, SciPy), on data where the right answer
is known (localization), the model-randomization sanity check, integrated gradients'
completeness, every method on LeNet-5, a VGG and a ResNet, the PNGs, bad input, and the
`experiments.explain` command.
"""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import serialization
from PIL import Image
from scipy import stats as scipy_stats

from cnn_jax import explain as ex
from cnn_jax.layers import ConvBlock, global_avg_pool, max_pool
from cnn_jax.data import get_dataset
from cnn_jax.models import get_model
from cnn_jax.train import create_train_state, make_optimizer, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- Localization: images whose class is decided by a pattern in one known region ----------

SIZE, REGION = 32, (slice(2, 18), slice(14, 30))   # a 16x16 square, top right: 25% of the image
NOISE = 6.0   # outside the region: uniform noise of this width around 0.5 (the stripes: 0.7)


def stripes(label, phase, size=16):
    """The region's content for a class: stripes 2 pixels wide, horizontal (0), vertical (1),
    diagonal (2) or anti-diagonal (3), shifted by `phase`."""
    r, c = np.mgrid[:size, :size]
    lines = (r, c, r + c, r - c)[label]
    return ((lines + phase) // 2 % 2).astype(np.float32)


def localization_data(n, seed):
    """(N, 32, 32, 1) images and labels. Only the region tells the class: the stripes'
    orientation (their phase is random); everywhere else is strong noise, the same for all
    classes. (Strong, so that a network must learn features that ignore it: with weak noise
    its features also respond outside the region, where the gradient then flows too.)"""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = (0.5 + NOISE * (rng.uniform(size=(n, SIZE, SIZE, 1)) - 0.5)).astype(np.float32)
    for i, (label, phase) in enumerate(zip(labels, rng.integers(0, 4, n))):
        images[i, REGION[0], REGION[1], 0] = (0.7 * stripes(label, phase)
                                              + 0.3 * rng.uniform(size=(16, 16)))
    return images, labels.astype(np.int32)


def region_mask():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[REGION] = True
    return mask


class SmallCNN(nn.Module):
    """Three conv blocks, global average pooling, a linear head: the architecture family
    (ResNet, ...) that Grad-CAM was made for."""
    num_classes: int = 4

    @nn.compact
    def __call__(self, x, train=False):
        x = max_pool(ConvBlock(8, 3, norm="batch", name="conv1")(x, train), 2)
        x = max_pool(ConvBlock(16, 3, norm="batch", name="conv2")(x, train), 2)
        x = ConvBlock(16, 3, norm="batch", name="conv3")(x, train)
        return nn.Dense(self.num_classes, name="head")(global_avg_pool(x))


def train(model, images, labels, steps, seed=0, batch_size=64):
    state = create_train_state(model, make_optimizer({"name": "adam"}, 1e-3),
                               jax.random.key(seed), images.shape[1:])
    step = jax.jit(train_step)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(images), batch_size)
        state, _ = step(state, {"image": images[idx], "label": labels[idx]})
    return {"params": state.params, "batch_stats": state.batch_stats}


@pytest.fixture(scope="module")
def localization():
    """A SmallCNN trained on the localization data, its maps on 32 unseen test images, and the
    same maps from re-initialized weights."""
    images, labels = localization_data(4096, seed=0)
    test_images, test_labels = localization_data(256, seed=1)
    model = SmallCNN()
    variables = train(model, images, labels, steps=200)
    accuracy = float(np.mean(np.argmax(model.apply(variables, test_images), -1) == test_labels))
    x, y = test_images[:32], test_labels[:32]
    random_variables = model.init(jax.random.key(1), x[:1])
    key = jax.random.key(0)

    def maps(v):
        return {"gradcam": ex.grad_cam(model, v, x, "conv3", y),
                "saliency": ex.saliency(model, v, x, y),
                "smoothgrad": ex.smoothgrad(model, v, x, key, y, num_samples=16)}

    return dict(model=model, variables=variables, accuracy=accuracy, x=x, y=y,
                trained=jax.tree.map(np.asarray, maps(variables)),
                randomized=jax.tree.map(np.asarray, maps(random_variables)))


def test_localization_model_learns_the_task(localization):
    print(f"SmallCNN on the localization data: {localization['accuracy']:.1%} test accuracy")
    assert localization["accuracy"] >= 0.95


@pytest.mark.parametrize("method", ["gradcam", "saliency", "smoothgrad"])
def test_maps_point_at_the_region_that_decides_the_class(localization, method):
    mask = region_mask()
    inside = ex.top_fraction_in_region(localization["trained"][method], mask)
    random_map = np.random.default_rng(0).uniform(size=(len(inside), SIZE, SIZE))
    chance = ex.top_fraction_in_region(random_map, mask)
    print(f"{method}: {inside.mean():.1%} of the top-decile pixels in the region "
          f"(min {inside.min():.1%}); a random map {chance.mean():.1%}")
    assert inside.mean() >= 0.7
    assert np.median(inside) >= 0.7
    assert chance.mean() < 0.3                  # the region is 25% of the image


@pytest.mark.parametrize("method", ["gradcam", "saliency", "smoothgrad"])
def test_maps_of_a_randomized_model_differ(localization, method):
    """Adebayo et al. (2018): maps that explain the model change when its weights are
    re-initialized. Threshold 0.5 on the mean rank correlation: maps that ignore the weights
    (edge detectors, as guided backprop turned out to be) correlate near 1 with themselves, and
    independent maps near 0; 0.5 is halfway. The control below shows a weight-blind map fails."""
    trained, randomized = localization["trained"][method], localization["randomized"][method]
    rho = ex.rank_correlation(trained, randomized)
    inside = ex.top_fraction_in_region(randomized, region_mask())
    print(f"{method}: rank correlation trained vs re-initialized {rho.mean():+.3f} "
          f"(max {rho.max():+.3f}); re-initialized: {inside.mean():.1%} of the top-decile "
          "pixels in the region")
    assert rho.mean() < 0.5
    assert inside.mean() < 0.4   # the re-initialized model's maps do not find the region


def test_randomization_check_catches_maps_that_barely_depend_on_the_weights(localization):
    """The control: the same check (mean rank correlation of the maps of the trained and of the
    re-initialized model, through the same `ex` functions, < 0.5 to pass) must fail for an
    explanation dominated by the image rather than the weights. Gradient x |input - 0.5| is
    such a map here: the noise's amplitude varies far more from pixel to pixel than any
    gradient, so both models' maps follow it (computed, not assumed: each map is the model's
    own gradient at its own weights). And a map compared with a second SmoothGrad of the same
    trained model (other noise draws) correlates strongly: the statistic sees agreement where
    there is some."""
    model, x, y = localization["model"], localization["x"], localization["y"]
    random_variables = model.init(jax.random.key(1), x[:1])

    def input_weighted(variables):
        gradient = ex.input_gradients(model, variables, x, y)
        return np.asarray(jnp.max(jnp.abs(gradient * (x - 0.5)), axis=-1))

    rho = ex.rank_correlation(input_weighted(localization["variables"]),
                              input_weighted(random_variables))
    print(f"control: gradient x |input - 0.5|, trained vs re-initialized: rho {rho.mean():+.3f}")
    assert rho.mean() > 0.5   # the check flags it

    again = ex.smoothgrad(model, localization["variables"], x, jax.random.key(99), y,
                          num_samples=16)
    rho_same = ex.rank_correlation(localization["trained"]["smoothgrad"], np.asarray(again))
    print(f"control: SmoothGrad of the trained model, two keys: rho {rho_same.mean():+.3f}")
    assert rho_same.mean() > 0.5


# --- Integrated gradients: completeness --------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real run of lenet5_digits (1 epoch: 44 steps, about 94% test accuracy) and its
    variables saved as msgpack."""
    from experiments.configs import lenet5_digits
    from cnn_jax.train import train_and_evaluate
    workdir = str(tmp_path_factory.mktemp("run"))
    config = lenet5_digits.get_config()
    config.num_epochs = 1
    state, _ = train_and_evaluate(config, workdir, log=lambda message: None)
    variables_file = os.path.join(workdir, "variables.msgpack")
    with open(variables_file, "wb") as f:
        f.write(serialization.msgpack_serialize({"params": state.params,
                                                  "batch_stats": state.batch_stats}))
    return workdir, variables_file


@pytest.fixture(scope="module")
def lenet(trained_run):
    """That run's LeNet-5 and variables, and 8 test digits."""
    from cnn_jax.data import get_dataset
    with open(trained_run[1], "rb") as f:
        variables = serialization.msgpack_restore(f.read())
    images = get_dataset("digits", "test").source.images[:8]
    params = jax.tree.map(jnp.asarray, variables["params"])
    return get_model("lenet5", num_classes=10), {"params": params}, images


def test_integrated_gradients_are_complete(lenet):
    """The attributions sum to f(x) - f(baseline); the trapezoidal rule's error shrinks as the
    steps grow, and is under 1% at 128 steps (measured: see the printed errors)."""
    model, variables, x = lenet
    baseline = 0.0   # a black image
    targets = jnp.argmax(model.apply(variables, x), -1)

    def f(images):
        return np.asarray(jnp.take_along_axis(model.apply(variables, images), targets[:, None],
                                              axis=1)[:, 0])

    difference = f(x) - f(jnp.full_like(x, baseline))
    errors = {}
    for steps in (8, 128):
        attributions = ex.integrated_gradients(model, variables, x, targets, baseline, steps)
        total = np.asarray(attributions).sum(axis=(1, 2, 3))
        errors[steps] = np.max(np.abs(total - difference) / np.abs(difference))
    print("largest relative completeness error:", errors)
    assert errors[128] < 0.01
    assert errors[128] < errors[8]


# --- Against independent references ------------------------------------------------------

def test_input_gradients_match_finite_differences(lenet):
    """On LeNet-5 without activations and with average pooling the logits are an affine
    function of the pixels, so central differences are exact at any step: the gradient along
    random directions must equal them. (Trained ReLU networks have kinks everywhere, where
    float32 differences are off by percents; integrated gradients' completeness, below, checks
    the gradients of the real network.)"""
    _, _, x = lenet
    x = x[:2]
    model = get_model("lenet5", num_classes=10, act="none", pool="avg")
    variables = random_variables(model, x)
    apply = jax.jit(model.apply)
    grads = np.asarray(ex.input_gradients(model, variables, x, 1))
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.normal(size=x.shape).astype(np.float32)
        hi = np.asarray(apply(variables, x + v))[:, 1]
        lo = np.asarray(apply(variables, x - v))[:, 1]
        np.testing.assert_allclose(np.sum(grads * v, axis=(1, 2, 3)), (hi - lo) / 2,
                                   rtol=1e-3, atol=1e-4)
    assert not np.allclose(ex.input_gradients(model, variables, x, 2), grads)


def test_activations_match_flax_capture_intermediates(lenet):
    model, variables, x = lenet
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    for layer, path in [("C1", ("C1",)), ("C3/conv", ("C3", "conv")), ("F6", ("F6",))]:
        expected = state["intermediates"]
        for part in path:
            expected = expected[part]
        np.testing.assert_allclose(ex.activations(model, variables, x, layer),
                                   expected["__call__"][0], rtol=1e-6)


def test_activation_stats_match_numpy(lenet):
    model, variables, x = lenet
    stats = ex.activation_stats(model, variables, x)
    assert list(stats) == ["C1", "C3", "C5", "F6"]   # the ReLU layers, in order
    for layer, s in stats.items():
        a = np.asarray(ex.activations(model, variables, x, layer))
        a2 = a.reshape(-1, a.shape[-1])
        assert float(s["mean"]) == pytest.approx(a.mean(), rel=1e-5)
        assert float(s["zero_fraction"]) == pytest.approx(np.mean(a == 0))
        assert float(s["dead_fraction"]) == pytest.approx(np.mean(np.all(a2 == 0, axis=0)))
    # A ReLU that never fires: a large negative bias on one C1 channel.
    params = jax.tree.map(lambda p: p, variables["params"])
    params["C1"]["conv"]["bias"] = params["C1"]["conv"]["bias"].at[2].set(-1e3)
    dead = ex.activation_stats(model, {**variables, "params": params}, x, ["C1"])["C1"]
    assert float(dead["dead_fraction"]) == pytest.approx(1 / 6)


def test_occlusion_matches_a_plain_loop(lenet):
    model, variables, x = lenet
    x = x[:2]
    patch, stride, value, target = 12, 10, 0.0, 2
    got = np.asarray(ex.occlusion(model, variables, x, target, patch=patch, stride=stride,
                                  value=value, chunk=4))   # 9 windows: 3 chunks, 3 padded
    apply = jax.jit(model.apply)
    clean = np.asarray(apply(variables, x))[:, target]
    total, count = np.zeros((2, 32, 32)), np.zeros((32, 32))
    for i in (0, 10, 20):            # every 10 pixels, plus the one flush with the edge (20)
        for j in (0, 10, 20):
            hidden = np.array(x)
            hidden[:, i:i + patch, j:j + patch] = value
            drop = clean - np.asarray(apply(variables, hidden))[:, target]
            total[:, i:i + patch, j:j + patch] += drop[:, None, None]
            count[i:i + patch, j:j + patch] += 1
    np.testing.assert_allclose(got, total / count, rtol=1e-4, atol=1e-5)


def test_chunked_weighted_sum_matches_a_plain_sum():
    """SmoothGrad, integrated gradients and occlusion evaluate their items `chunk` at a time
    (the last chunk padded with weight 0); any chunk size gives the plain weighted sum. (The
    methods' own chunked paths are checked with several chunks below: completeness,
    occlusion's loop, SmoothGrad without noise.)"""
    from cnn_jax.explain.attribution import _chunked_weighted_sum
    xs = jnp.arange(7.0)
    weights = jnp.linspace(0.5, 2.0, 7)

    def fn(chunk):   # (k,) -> (k, 2, 3)
        return chunk[:, None, None] * jnp.arange(6.0).reshape(2, 3) + chunk[:, None, None] ** 2

    expected = jnp.tensordot(weights, fn(xs), axes=1)
    for chunk in (1, 3, 7, 100):
        np.testing.assert_allclose(_chunked_weighted_sum(fn, xs, weights, chunk), expected,
                                   rtol=1e-6)


def test_smoothgrad_without_noise_is_saliency(lenet):
    model, variables, x = lenet
    np.testing.assert_allclose(
        ex.smoothgrad(model, variables, x, jax.random.key(0), num_samples=3, noise_level=0.0,
                      chunk=2),
        ex.saliency(model, variables, x), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("noise_level,num_samples,chunk", [(0.15, 5, 2), (0.5, 3, 8)])
def test_smoothgrad_is_the_mean_gradient_over_its_noise_draws(lenet, noise_level, num_samples,
                                                              chunk):
    """The noisy path against a plain loop over the draws, with the same keys: draw s adds
    `noise_level` x (the image's max - min) x normal(split(key, num_samples)[s], batch shape)
    to the batch; the map is max over channels of |the mean gradient of the clean image's
    predicted logit|."""
    model, variables, x = lenet
    x = jnp.asarray(x, jnp.float32)[:4]
    key = jax.random.key(7)
    targets = jnp.argmax(model.apply(variables, x), -1)
    span = np.ptp(np.asarray(x), axis=(1, 2, 3)).reshape(-1, 1, 1, 1)

    def target_logit_sum(images):
        return jnp.take_along_axis(model.apply(variables, images), targets[:, None], 1).sum()

    total = np.zeros(x.shape)
    for draw_key in jax.random.split(key, num_samples):
        noisy = x + jax.random.normal(draw_key, x.shape) * noise_level * span
        total += np.asarray(jax.grad(target_logit_sum)(noisy), np.float64)
    expected = np.abs(total / num_samples).max(-1)
    got = ex.smoothgrad(model, variables, x, key, num_samples=num_samples,
                        noise_level=noise_level, chunk=chunk)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * expected.max())
    # The noise matters: the map is not plain saliency.
    assert np.abs(got - ex.saliency(model, variables, x)).max() > 0.05 * expected.max()


def test_rank_correlation_and_ranks_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 8, 8))
    b = a + rng.normal(size=(3, 8, 8))
    b[0, :4] = 0.0   # ties
    a[2] = np.round(a[2])
    expected = [scipy_stats.spearmanr(a[i].ravel(), b[i].ravel())[0] for i in range(3)]
    np.testing.assert_allclose(ex.rank_correlation(a, b), expected, rtol=1e-10)
    np.testing.assert_allclose(ex.rankdata(b[0].ravel()), scipy_stats.rankdata(b[0].ravel()))


def test_top_fraction_in_region_by_hand():
    mask = np.zeros((10, 10), bool)
    mask[:2] = True                               # 20 pixels; the top decile is 10 pixels
    m = np.zeros((2, 10, 10))
    m[0, 0, :] = 1.0                              # all 10 top pixels inside
    m[1, 0, :5], m[1, 9, :5] = 1.0, 1.0           # 5 inside, 5 outside
    np.testing.assert_allclose(ex.top_fraction_in_region(m, mask), [1.0, 0.5])
    # A constant map: every pixel tied, so the region's share of the image.
    assert ex.top_fraction_in_region(np.ones((1, 10, 10)), mask)[0] == pytest.approx(0.2)


# --- Every method on LeNet-5, a VGG and a ResNet ---------------------------------------------

MODELS = {
    "lenet5": dict(kwargs={}, shape=(32, 32, 1)),
    "vgg11_bn_cifar": dict(kwargs={}, shape=(32, 32, 3)),
    "resnet18_cifar": dict(kwargs={"width": 8}, shape=(24, 24, 3)),
}


def random_variables(model, x, seed=0):
    """Variables shaped as `model.init` makes them, drawn with NumPy (LeCun-normal kernels,
    zero biases, unit norm scales and running variances): compiling `init` for VGG and
    ResNet costs more than everything the tests then do with them."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0, 1 / np.sqrt(fan_in), leaf.shape).astype(np.float32)
        return np.full(leaf.shape, 1.0 if ("scale" in name or "var" in name) else 0.0,
                       np.float32)

    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module", params=list(MODELS))
def every_method(request):
    """Each method run twice (and SmoothGrad with a second key) on 2 random images."""
    spec = MODELS[request.param]
    model = get_model(request.param, num_classes=10, **spec["kwargs"])
    x = jax.random.uniform(jax.random.key(1), (2, *spec["shape"]))
    variables = random_variables(model, x)
    layer = ex.default_cam_layer(model, variables, x)
    key = jax.random.key(0)
    options = {"smoothgrad": dict(num_samples=2, chunk=2),
               "integrated_gradients": dict(steps=2, chunk=3),
               "occlusion": dict(patch=12, stride=12, chunk=9)}

    def run_all(key):
        out = {m: ex.explain(m, model, variables, x, key=key,
                             layer=layer if m == "gradcam" else None, **options.get(m, {}))
               for m in ex.METHODS}
        # Called as explain() calls it, so that the compiled function is reused.
        out["integrated_gradients_raw"] = ex.integrated_gradients(
            model, variables, x, None, **options["integrated_gradients"])
        out["activations"] = ex.activations(model, variables, x, layer)
        out["stats"] = ex.activation_stats(model, variables, x)
        return jax.tree.map(np.asarray, out)

    return dict(name=request.param, model=model, variables=variables, x=x, layer=layer,
                first=run_all(key), second=run_all(key),
                other_key=np.asarray(ex.smoothgrad(model, variables, x, jax.random.key(1), None,
                                                   **options["smoothgrad"])))


def test_every_method_shapes_and_ranges(every_method):
    x, first = every_method["x"], every_method["first"]
    n, h, w, c = x.shape
    for method in ex.METHODS:
        assert first[method].shape == (n, h, w), method
        assert np.all(np.isfinite(first[method])), method
        assert np.any(first[method] != 0), method
    for method in ("saliency", "smoothgrad", "gradcam", "integrated_gradients"):
        assert first[method].min() >= 0, method
    assert first["integrated_gradients_raw"].shape == (n, h, w, c)
    layers = {lay.name: lay for lay in ex.list_layers(every_method["model"],
                                                      every_method["variables"], x)}
    assert first["activations"].shape == layers[every_method["layer"]].shape
    for layer, s in first["stats"].items():
        assert layers[layer].act == "relu"
        assert 0 <= s["zero_fraction"] <= 1 and 0 <= s["dead_fraction"] <= 1
        assert s["mean"] >= 0   # ReLU outputs
    name, kernel = ex.first_conv_kernel(every_method["model"], every_method["variables"], x)
    assert layers[name].kind == "Conv" and kernel.shape[2] == c


def test_every_method_is_deterministic(every_method):
    first, second = every_method["first"], every_method["second"]
    for method in first:
        jax.tree.map(np.testing.assert_array_equal, first[method], second[method])
    # SmoothGrad's noise comes from its key alone.
    assert not np.array_equal(every_method["other_key"], first["smoothgrad"])


def test_default_cam_layer_is_the_last_spatial_block(every_method):
    expected = {"lenet5": "C3", "vgg11_bn_cifar": "conv8", "resnet18_cifar": "layer4_1"}
    assert every_method["layer"] == expected[every_method["name"]]


def test_grad_cam_equals_cam_on_resnet(every_method):
    """With global average pooling then a linear head (ResNet), the gradient of a logit with
    respect to the last block is the head's weight / (h*w) at every position, so Grad-CAM is
    exactly CAM (Zhou et al., 2016): relu(sum_k W[k, c] A_k) / (h*w), then upsampled."""
    if every_method["name"] != "resnet18_cifar":
        pytest.skip("CAM's closed form needs global average pooling then a linear head")
    variables, x = every_method["variables"], every_method["x"]
    acts = every_method["first"]["activations"]                                 # (2, 3, 3, 64)
    head = variables["params"]["head"]
    logits = acts.mean(axis=(1, 2)) @ head["kernel"] + head["bias"]   # ResNet's own head
    targets = np.argmax(logits, -1)                                   # the predicted classes
    w = np.asarray(head["kernel"])[:, targets]                                   # (64, 2)
    cam = jax.nn.relu(np.einsum("nhwk,kn->nhw", acts, w)) / (acts.shape[1] * acts.shape[2])
    expected = jax.image.resize(cam, x.shape[:3], method="bilinear")
    np.testing.assert_allclose(every_method["first"]["gradcam"], expected, rtol=1e-4, atol=1e-7)


# --- Pictures -----------------------------------------------------------------------------

def read_png(path):
    assert os.path.getsize(path) > 0
    with Image.open(path) as image:
        return np.asarray(image)


def test_overlay_png_shows_the_map_where_it_is_high(tmp_path):
    image = np.full((16, 16, 1), 0.5, np.float32)
    image[0, 0] = 0.0                                   # so the image is not constant
    heat = np.zeros((16, 16))
    heat[:8, :8] = 1.0                                  # important: the top-left quarter
    png = read_png(ex.save_png(str(tmp_path / "overlay.png"), ex.overlay(image, heat)))
    assert png.shape == (16, 16, 3) and png.dtype == np.uint8
    grey = ex.to_rgb(image)
    np.testing.assert_array_equal(png[8:, 8:], grey[8:, 8:])   # unimportant: the image
    red, green, blue = png[2:8, 2:8].astype(int).transpose(2, 0, 1)
    assert np.all(red > blue + 50)                             # jet's hot end is red


def test_activation_grid_png_has_one_tile_per_channel(tmp_path):
    maps = np.zeros((4, 4, 3), np.float32)
    maps[..., 0] = 1.0          # channel 0: all on
    maps[1, 2, 2] = 0.5         # channel 2: one pixel at half; channel 1 never fires
    png = read_png(ex.save_png(str(tmp_path / "maps.png"),
                               ex.activation_grid(maps, ncols=3, min_tile=4)))
    assert png.shape == (6, 16)                       # 1 + 3 x (4 + 1) wide, 1 + 4 + 1 high
    tiles = [png[1:5, 1 + 5 * k:5 + 5 * k] for k in range(3)]
    assert np.all(tiles[0] == 255) and np.all(tiles[1] == 0)
    assert tiles[2][1, 2] == 128 and tiles[2].sum() == 128


def test_filter_grid_png_puts_zero_at_mid_grey(tmp_path):
    kernel = np.zeros((3, 3, 1, 2), np.float32)
    kernel[0, 0, 0, 0] = 1.0            # filter 0: one positive tap, top left
    kernel[1, 1, 0, 1] = -1.0           # filter 1: one negative tap, centre
    png = read_png(ex.save_png(str(tmp_path / "filters.png"), ex.filter_grid(kernel, min_tile=3)))
    f0, f1 = png[2:5, 2:5], png[2:5, 7:10]
    assert f0[0, 0] == 255 and f1[1, 1] == 0
    assert f0[1, 1] == 128 and f1[0, 0] == 128


def test_maps_look_like_their_pngs(localization, tmp_path):
    """The trained model's Grad-CAM overlays, written and read back: in the picture, the
    reddest pixels (jet's hot end) lie in the region, and the input half is the image."""
    x, cams = localization["x"], localization["trained"]["gradcam"]
    for i in range(3):
        png = read_png(ex.save_png(str(tmp_path / f"cam{i}.png"),
                                   np.concatenate([ex.to_rgb(x[i]), ex.overlay(x[i], cams[i])], 1)))
        assert png.shape == (32, 64, 3)
        np.testing.assert_array_equal(png[:, :32], ex.to_rgb(x[i]))
        redness = png[:, 32:, 0].astype(int) - png[:, 32:, 2]
        reddest = redness >= np.quantile(redness, 0.97)
        assert np.mean(region_mask()[reddest]) >= 0.9


# --- Bad input ------------------------------------------------------------------------------

def test_unknown_layer_lists_the_layers(lenet):
    model, variables, x = lenet
    for call in (lambda: ex.activations(model, variables, x, "C2"),
                 lambda: ex.grad_cam(model, variables, x, "C2"),
                 lambda: ex.activation_stats(model, variables, x, ["C1", "nope"])):
        with pytest.raises(ValueError, match=r"Unknown layer.*'(C2|nope)'.*C1/conv, C1, C3/conv, "
                                             r"C3, C5/conv, C5, F6/dense, F6, head"):
            call()


def test_grad_cam_on_a_layer_that_is_not_spatial(lenet):
    model, variables, x = lenet
    with pytest.raises(ValueError, match=r"spatial layer.*'F6' outputs shape \(8, 84\).*"
                                         r"Spatial layers: C1/conv, C1, C3/conv, C3, C5/conv, C5"):
        ex.grad_cam(model, variables, x, "F6")


@pytest.mark.parametrize("call, match", [
    (lambda m, v, x: ex.saliency(m, v, x[0]), r"\(N, H, W, C\).*\(32, 32, 1\)"),
    (lambda m, v, x: ex.explain("lime", m, v, x), r"Unknown explanation method 'lime'.*"
                                                  r"saliency, smoothgrad, gradcam"),
    (lambda m, v, x: ex.explain("smoothgrad", m, v, x), r"pass key="),
    (lambda m, v, x: ex.explain("saliency", m, v, x, layer="C3"), r"takes no layer.*gradcam"),
    (lambda m, v, x: ex.occlusion(m, v, x, patch=40), r"patch must be in \[1, 32\]"),
    (lambda m, v, x: ex.integrated_gradients(m, v, x, steps=0), r"steps must be >= 1"),
    (lambda m, v, x: ex.smoothgrad(m, v, x, jax.random.key(0), num_samples=0),
     r"num_samples must be >= 1"),
    (lambda m, v, x: ex.overlay(x[0], np.zeros((8, 8))), r"must match"),
    (lambda m, v, x: ex.activation_grid(np.zeros((2, 4, 4, 3))), r"maps\[i\]"),
])
def test_bad_input_is_a_clear_error(lenet, call, match):
    model, variables, x = lenet
    with pytest.raises(ValueError, match=match):
        call(model, variables, x)


# --- The command ----------------------------------------------------------------------------

def test_command_writes_overlays(trained_run, tmp_path):
    from experiments import explain as command
    workdir, variables_file = trained_run
    out = str(tmp_path / "out")
    assert command.main([workdir, "--method", "gradcam", "--layer", "C3", "--num_test", "3",
                         "--variables", variables_file, "--out", out]) == 0
    files = sorted(os.listdir(out))
    assert len(files) == 3 and all(f.startswith("test") and f.endswith("_gradcam_C3.png")
                                   for f in files)
    labels = get_dataset("digits", "test").source.labels   # sorted by class: test0000.. are 0s
    assert len({int(labels[int(f[4:8])]) for f in files}) == 3  # spread over the classes
    png = read_png(os.path.join(out, files[0]))
    assert png.shape[2] == 3 and png.shape[0] >= 300 and png.shape[1] > 2 * png.shape[0]
    third = png.shape[1] // 3                   # input | heat map with colour bar | overlay
    assert png[:, :third].std() > 0 and png[:, third:2 * third].std() > 0


def test_num_test_samples_across_classes_deterministically():
    from experiments.explain import sample_test
    test = get_dataset("digits", "test")
    chosen = sample_test(test, 20)
    assert chosen == sample_test(test, 20) and len(set(chosen)) == 20
    assert np.bincount(test.source.labels[chosen], minlength=10).tolist() == [2] * 10


def _red_pixels(png):
    return int(((png[..., 0] > 180) & (png[..., 1] < 60) & (png[..., 2] < 60)).sum())


def test_activation_figure_marks_dead_channels_and_filters_are_large(tmp_path):
    from cnn_jax.explain.plot import activation_figure, filter_figure
    maps = np.random.default_rng(0).uniform(0.1, 1.0, (8, 8, 6)).astype(np.float32)
    maps[..., 4] = 0.0
    dead = maps.max(axis=(0, 1)) <= 0
    marked = activation_figure(maps, "test", dead)
    unmarked = activation_figure(maps, "test", np.zeros(6, bool))
    assert _red_pixels(marked) > 100 and _red_pixels(unmarked) == 0
    assert marked.shape[1] >= 600               # 6 tiles of 8x8 drawn large
    kernel = np.random.default_rng(0).normal(size=(5, 5, 1, 6)).astype(np.float32)
    picture = filter_figure(kernel, "C1")
    assert picture.shape[1] >= 6 * 80           # about 80-100 pixels a filter, not 5
    with pytest.raises(ValueError, match="kernel"):
        filter_figure(kernel[0], "C1")


def test_command_explains_image_files_and_draws_filters(trained_run, tmp_path):
    from experiments import explain as command
    workdir, variables_file = trained_run
    digit = np.zeros((20, 20), np.uint8)
    digit[4:16, 9:11] = 255                      # a "1", at another size than the dataset's
    Image.fromarray(digit).save(tmp_path / "one.png")
    out = str(tmp_path / "out")
    common = ["--variables", variables_file, "--out", out]
    assert command.main([workdir, "--method", "smoothgrad", "--images",
                         str(tmp_path / "one.png"), *common]) == 0
    assert command.main([workdir, "--method", "activations", "--layer", "C1",
                         "--num_test", "1", *common]) == 0
    assert command.main([workdir, "--method", "filters", *common]) == 0
    assert sorted(os.listdir(out)) == ["filters_C1.conv.png", "one_smoothgrad.png",
                                       "test0054_activations_C1.png"]  # sample_test(.., 1)
    assert read_png(os.path.join(out, "one_smoothgrad.png")).shape[1] >= 600


def test_command_errors_are_clear(trained_run, tmp_path, capsys):
    from experiments import explain as command
    workdir, variables_file = trained_run
    assert command.main([workdir, "--method", "gradcam", "--layer", "C3", "--num_test", "1",
                         "--out", str(tmp_path / "from_checkpoint")]) == 0  # the run's own
    bare = tmp_path / "bare"  # a run's config without its checkpoints
    bare.mkdir()
    shutil.copy(os.path.join(workdir, "config.json"), bare)
    assert command.main([str(bare), "--method", "gradcam"]) == 2
    assert "has no checkpoints/ folder" in capsys.readouterr().err
    assert command.main([workdir, "--layer", "C2", "--variables", variables_file,
                         "--out", str(tmp_path)]) == 2
    assert "Valid layers" in capsys.readouterr().err
    assert command.main([str(tmp_path), "--variables", variables_file]) == 2
    assert "config.json" in capsys.readouterr().err
    wrong = str(tmp_path / "wrong.msgpack")
    with open(wrong, "wb") as f:
        f.write(serialization.msgpack_serialize({"params": {"C1": {}}}))
    assert command.main([workdir, "--variables", wrong]) == 2
    assert "does not match the run's model" in capsys.readouterr().err


def test_command_restores_an_orbax_checkpoint_and_runs_as_a_script(trained_run, tmp_path):
    from cnn_jax.train.checkpoint import Checkpointer
    run, variables_file = trained_run
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with open(os.path.join(run, "config.json")) as f, open(os.path.join(workdir, "config.json"),
                                                           "w") as g:
        g.write(f.read())
    with open(variables_file, "rb") as f:
        variables = serialization.msgpack_restore(f.read())
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))  # as the training loop saves
    ckpt.save(44, {"params": variables["params"], "batch_stats": {}}, {"config": {}})
    ckpt.wait()
    ckpt.close()
    out = str(tmp_path / "out")
    result = subprocess.run([sys.executable, "-m", "experiments.explain", workdir,
                             "--method", "occlusion", "--num_test", "2", "--out", out],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "_occlusion.png: label" in result.stdout
    assert len(os.listdir(out)) == 2
