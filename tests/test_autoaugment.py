"""cnn_jax.data.autoaugment against torchvision.transforms.v2: each op alone equals
torchvision.transforms.v2.functional on the same uint8 tensor (as RandAugment calls it), bit for
bit; the draws are uniform and the transforms apply exactly the ops they draw (replayed op by op
through torchvision); masks move with the image through the geometric ops only; spec options
are checked; a config trains with it."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from cnn_jax.data import autoaugment as A
from cnn_jax.data.transforms import make_preprocess
from tests.conftest import require

SHAPE = (2, 17, 19)  # odd sizes: half-pixel centres, and rows where shears tie exactly
BINS = 31


def _torch():
    torch = require("torch")
    v2 = require("torchvision.transforms.v2")
    return torch, v2


def tv_apply(ops, image, magnitudes):
    """torchvision's RandAugment._apply_image_or_video_transform, op after op, on one uint8
    (H, W, C) image; returns (H, W, C) uint8."""
    torch, v2 = _torch()
    policy = v2.RandAugment()
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    for op, m in zip(ops, magnitudes):
        x = policy._apply_image_or_video_transform(
            x, op, float(m), interpolation=policy.interpolation, fill=policy._fill)
    return x.permute(1, 2, 0).numpy()


def uint8_images(c, n=SHAPE[0], h=SHAPE[1], w=SHAPE[2], seed=0, low=0):
    x = np.random.default_rng(seed).integers(low, 256, (n, h, w, c), dtype=np.uint8)
    x[:, :4] = x[:, :4, :, :1]  # gray rows: where saturation and contrast blends tie
    return x


def torch_space(space):
    _, v2 = _torch()
    return {"rand_augment": v2.RandAugment, "trivial_augment": v2.TrivialAugmentWide}[space] \
        ._AUGMENTATION_SPACE


# --------------------------------------------------------------------------------- the tables


@pytest.mark.parametrize("space", ["rand_augment", "trivial_augment"])
@pytest.mark.parametrize("bins,h,w", [(31, 17, 19), (10, 224, 160), (2, 32, 32)])
def test_op_list_and_magnitudes_are_torchvisions(space, bins, h, w):
    theirs = torch_space(space)
    assert tuple(theirs) == A.OPS
    assert {op for op, (_, signed) in theirs.items() if signed} == set(A.SIGNED)
    ours = A.magnitudes(space, bins, h, w)
    for i, (op, (fn, _)) in enumerate(theirs.items()):
        ref = fn(bins, h, w)
        ref = np.zeros(bins, np.float32) if ref is None else ref.numpy().astype(np.float32)
        if op == "Posterize":
            np.testing.assert_array_equal(ours[i], ref)
        else:
            # torch.linspace's vectorized CPU kernel counts whole SIMD registers up from one
            # base (so its last bit depends on the register width: with AVX-512,
            # linspace(0, 32, 31)[15] == 15.999999); ours is its scalar formula, the same on
            # every machine: within one float32 rounding of it.
            np.testing.assert_allclose(ours[i], ref, rtol=2 ** -23, atol=0, err_msg=op)


# ------------------------------------------------------------------------- each op, bit for bit


def _magnitudes_for(op, h, w):
    """Three magnitudes per op as the policies draw them: RandAugment's default bin, a negated
    TrivialAugmentWide bin for the signed ops, and the strongest. ShearX/ShearY at RandAugment's
    bin 20 (0.2) put row 2's sample points exactly half-way between pixels (0.2 * 2.5 = 0.5):
    there only torch's own float32 rounding decides, and it must be matched."""
    i = A.OPS.index(op)
    ra = A.magnitudes("rand_augment", BINS, h, w)[i]
    ta = A.magnitudes("trivial_augment", BINS, h, w)[i]
    sign = -1.0 if op in A.SIGNED else 1.0
    picks = [float(ra[9]), sign * float(ta[20]), float(ta[30])]
    if op in ("ShearX", "ShearY"):
        picks.append(sign * float(ra[20]))
    return picks


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("op", A.OPS)
def test_op_equals_torchvision(op, channels):
    x = uint8_images(channels, seed=channels)
    h, w = x.shape[1:3]
    for m in _magnitudes_for(op, h, w):
        ours = np.asarray(A.apply_op(op, x, m))
        assert ours.dtype == np.float32 and ours.shape == x.shape
        ref = np.stack([tv_apply([op], img, [m]) for img in x])
        np.testing.assert_array_equal(ours, ref.astype(np.float32), err_msg=f"{op}({m})")
    if op in ("Identity", "Color") and channels == 1:  # torchvision: gray images keep their colour
        np.testing.assert_array_equal(ours, x)


def test_geometric_ops_hit_exact_ties_and_rotate_fast_paths():
    """The cases above are not vacuous: at shear 0.2 some sample points lie half-way between
    two pixels (to 1e-6, from the float32 matrix; exactly, in real numbers), where only the
    float32 rounding picks one; and 90-degree rotations of square images (torchvision's rot90
    fast path) come out of the same sampling grid."""
    h, w = SHAPE[1:]
    m = 0.2
    rt = A.sampling_matrix("ShearX", m, h, w)
    x = np.arange(w) - (w - 1) / 2
    y = np.arange(h)[:, None] - (h - 1) / 2
    source = x * float(rt[0, 0]) * w / 2 + y * float(rt[1, 0]) * w / 2 + float(rt[2, 0]) * w / 2
    source = source + (w - 1) / 2
    assert np.isclose(source - np.floor(source), 0.5, atol=1e-6).any()
    sq = uint8_images(3, h=12, w=12)
    for angle in (90.0, -90.0, 180.0):
        ref = np.stack([tv_apply(["Rotate"], img, [angle]) for img in sq])
        np.testing.assert_array_equal(np.asarray(A.apply_op("Rotate", sq, angle)), ref)


def test_color_on_many_colours_and_every_gray():
    """Saturation's float32 chain (torch's fused multiply-adds: grayscale, then the blend) on
    2**16 - 256 random colours and every gray level, at two factors: truncation to uint8 turns
    any last-bit difference into a whole level."""
    torch, v2 = _torch()
    rng = np.random.default_rng(1)
    colours = np.concatenate([rng.integers(0, 256, (2 ** 16 - 256, 3)),
                              np.repeat(np.arange(256)[:, None], 3, axis=1)]).astype(np.uint8)
    image = colours.reshape(1, 256, 256, 3)
    for m in (-1.0, float(A.magnitudes("rand_augment", BINS, 1, 1)[A.OPS.index("Color")][9])):
        ref = v2.functional.adjust_saturation(torch.from_numpy(image).permute(0, 3, 1, 2), 1.0 + m)
        np.testing.assert_array_equal(np.asarray(A.apply_op("Color", image, m)),
                                      ref.permute(0, 2, 3, 1).numpy())


# ----------------------------------------------------------------------------------- the draws


def test_draws_are_uniform():
    n = 4000
    op, bins, negative = (np.asarray(a) for a in A.draw_ops(jax.random.key(0), n, 2, BINS))
    assert op.shape == bins.shape == negative.shape == (2, n)
    for row in range(2):  # each of RandAugment's draws, and TrivialAugment's (the first)
        assert stats.chisquare(np.bincount(op[row], minlength=len(A.OPS))).pvalue > 1e-3
        assert stats.chisquare(np.bincount(bins[row], minlength=BINS)).pvalue > 1e-3
        assert abs(negative[row].mean() - 0.5) < 4 * math.sqrt(0.25 / n)
    assert op.min() == 0 and op.max() == len(A.OPS) - 1
    assert not np.array_equal(op[0], op[1])  # independent draws per position
    _, fixed, _ = A.draw_ops(jax.random.key(0), n, 2, BINS, magnitude=9)
    assert np.all(np.asarray(fixed) == 9)


# One compilation per policy, shared by the tests below (the 14 ops compile in ~4 s).
POLICIES = {"trivial_augment": lambda: A.trivial_augment(targets=("mask",), fill=255),
            "rand_augment": lambda: A.rand_augment(num_ops=2, magnitude=9, targets=("mask",),
                                                   fill=255)}
DRAWS = {"trivial_augment": (1, None), "rand_augment": (2, 9)}  # (num_ops, magnitude)
KEY = jax.random.key(7)


@functools.lru_cache(maxsize=None)
def augmented(space):
    """(x, mask, output) for 64 random images; mask = red > 127, pixel values from 1 so that
    the image is 0 (its fill) exactly where the mask is filled."""
    x = uint8_images(3, n=64, seed=5, low=1)
    mask = (x[..., 0] > 127).astype(np.int32)
    out = jax.jit(POLICIES[space]())(KEY, {"image": jnp.asarray(x) / 255.0, "mask": mask})
    return x, mask, {k: np.asarray(v) for k, v in out.items()}


def drawn(space, n):
    """Per image, the ops and signed magnitudes it drew: [(names, magnitudes)] * n."""
    num_ops, magnitude = DRAWS[space]
    op, bins, negative = (np.asarray(a) for a in A.draw_ops(KEY, n, num_ops, BINS, magnitude))
    table = A.magnitudes(space, BINS, *SHAPE[1:])
    return [([A.OPS[op[k, i]] for k in range(num_ops)],
             [table[op[k, i], bins[k, i]] * (-1.0 if negative[k, i] and A.OPS[op[k, i]] in A.SIGNED
                                             else 1.0) for k in range(num_ops)])
            for i in range(n)]


@pytest.mark.parametrize("space", list(POLICIES))
def test_transform_applies_exactly_the_drawn_ops(space):
    """Each image's own draws, replayed through torchvision op after op: exactly num_ops ops,
    in order, at the drawn magnitudes and signs."""
    x, _, out = augmented(space)
    draws = drawn(space, len(x))
    assert len({name for names, _ in draws for name in names}) >= 12  # most ops were exercised
    ref = np.stack([tv_apply(names, img, mags) for img, (names, mags) in zip(x, draws)])
    assert out["image"].dtype == np.float32
    np.testing.assert_array_equal(np.round(out["image"] * 255), ref)


def test_rand_augment_with_no_ops_is_the_identity():
    x = uint8_images(3)
    out = A.rand_augment(num_ops=0)(jax.random.key(0), {"image": x / np.float32(255)})
    np.testing.assert_array_equal(np.asarray(out["image"]), x / np.float32(255))


# ----------------------------------------------------------------------------------- the masks


def test_masks_move_with_geometric_ops_only():
    """Afterwards, where the mask is not `fill`, mask == (red > 127) of the output image if the
    drawn op is geometric (or Identity); after any other op the mask is untouched."""
    x, mask, out = augmented("trivial_augment")
    image, moved = np.round(out["image"] * 255), out["mask"]
    assert moved.dtype == mask.dtype
    filled_any = False
    for i, ([name], _) in enumerate(drawn("trivial_augment", len(x))):
        if name in A.GEOMETRIC or name == "Identity":
            filled = moved[i] == 255
            np.testing.assert_array_equal(filled, np.all(image[i] == 0, axis=-1))
            np.testing.assert_array_equal(moved[i][~filled], (image[i, ..., 0] > 127)[~filled])
            filled_any |= filled.any()
        else:
            np.testing.assert_array_equal(moved[i], mask[i], err_msg=name)
    assert filled_any


def test_masks_follow_every_rand_augment_op():
    """Two ops per image: the mask goes through the same geometric ops as the image, in order
    (replayed with apply_op on mask + 1 as an image: 0 outside, then `fill`)."""
    x, mask, out = augmented("rand_augment")
    for i, (names, mags) in enumerate(drawn("rand_augment", len(x))):
        expected = np.stack([mask[i] + 1] * SHAPE[0])[..., None]  # (the op tests' shape)
        for name, m in zip(names, mags):
            if name in A.GEOMETRIC:
                expected = np.asarray(A.apply_op(name, expected, m))
        expected = expected[0, ..., 0]
        np.testing.assert_array_equal(out["mask"][i], np.where(expected == 0, 255, expected - 1))


# ------------------------------------------------------------------------------ specs, options


def test_specs_build_in_make_preprocess():
    """(They run for real in the training test below.)"""
    x = jax.ShapeDtypeStruct((4, 17, 19, 3), jnp.uint8)
    for spec in ("trivial_augment|normalize", "rand_augment(num_ops=2, magnitude=9)",
                 "random_crop(padding=2)|hflip|rand_augment|normalize"):
        pre = make_preprocess(spec, num_classes=2, mean=(0.5,) * 3, std=(0.25,) * 3)
        out = jax.eval_shape(pre, jax.random.key(0), {"image": x})
        assert out["image"].shape == x.shape and out["image"].dtype == jnp.float32


@pytest.mark.parametrize("spec,match", [
    ("rand_augment(magnitude=31)", r"rand_augment: magnitude must be an int in \[0, 30\]"),
    ("rand_augment(magnitude=-1)", r"magnitude must be an int in \[0, 30\]"),
    ("rand_augment(magnitude=5, num_magnitude_bins=5)", r"magnitude must be an int in \[0, 4\]"),
    ("rand_augment(magnitude=4.5)", r"magnitude must be an int"),
    ("rand_augment(num_ops=-1)", r"rand_augment: num_ops must be an int >= 0, got -1"),
    ("rand_augment(num_ops=1.0)", r"num_ops must be an int >= 0"),
    ("trivial_augment(num_magnitude_bins=1)",
     r"trivial_augment: num_magnitude_bins must be an int >= 2"),
    ("trivial_augment(bins=3)",
     r"Transform trivial_augment: .*bins.*Its options: num_magnitude_bins"),
    ("rand_augment(fill=0)", r"come from the dataset"),
])
def test_bad_options(spec, match):
    with pytest.raises(ValueError, match=match):
        make_preprocess(spec, num_classes=2)


@pytest.mark.parametrize("spec", ["trivial_augment", "rand_augment(num_ops=1)"])
def test_refused_in_evaluation(spec):
    with pytest.raises(ValueError, match=re.escape(f"but ['{spec.split('(')[0]}'] draw at random")):
        make_preprocess(spec, num_classes=2, train=False)


def test_images_need_one_or_three_channels():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        A.trivial_augment()(jax.random.key(0), {"image": jnp.zeros((2, 8, 8, 4))})


# ------------------------------------------------------------------------------------ training


@pytest.mark.slow  # ~20 s, nearly all of it the training run's own setup and compilation
def test_a_config_trains_with_trivial_augment():
    from cnn_jax.config import default_config
    from cnn_jax.train import train_and_evaluate

    config = default_config()
    config.num_epochs = 1
    config.batch_size, config.eval_batch_size = 64, 512
    config.validation_fraction = 0.0  # (fewer compilations)
    config.train_transforms = "trivial_augment|normalize"
    config.eval_transforms = "normalize"
    _, history = train_and_evaluate(config, None, log=lambda s: None)
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    assert history[0]["train_loss"] < math.log(10)  # it learns, augmented, within one epoch
