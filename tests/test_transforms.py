"""cnn_jax.data.transforms: the spec parser, make_preprocess, and every transform, checked
against NumPy/PIL references or exact structural properties (crops are windows of the padded
input, flips are mirrors, mixup/cutmix images agree with their soft labels)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.data.transforms import (RANDOM, TRANSFORMS, hflip, make_preprocess, parse_spec,
                                     random_resized_crop)

N, H, W, C = 8, 16, 16, 3
CLASSES = 5
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def images(n=N, h=H, w=W, c=C, seed=0):
    """Random float32 images in [0, 1]; all values distinct, so windows and mirrors are unique."""
    return np.random.default_rng(seed).random((n, h, w, c), dtype=np.float32)


def smooth(h=H, w=W, c=1):
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    img = 0.5 + 0.25 * np.sin(x / 5.0) + 0.2 * np.cos(y / 7.0 + 1.0)
    return np.repeat(img[None, :, :, None], c, axis=-1).astype(np.float32)


def batch(image, labels=None):
    labels = np.arange(len(image)) % CLASSES if labels is None else labels
    return {"image": image, "label": np.asarray(labels), "index": np.arange(len(image))}


def run(spec, image, key=0, labels=None, num_classes=CLASSES, **kw):
    pre = make_preprocess(spec, num_classes=num_classes, mean=kw.pop("mean", MEAN),
                          std=kw.pop("std", STD), **kw)
    out = pre(jax.random.key(key), batch(image, labels))
    return {k: np.asarray(v) for k, v in out.items()}


# --------------------------------------------------------------------------- make_preprocess


@pytest.mark.parametrize("as_jax", [False, True])
@pytest.mark.parametrize("jit", [False, True])
def test_uint8_becomes_float32_over_255(as_jax, jit):
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    pre = make_preprocess("", num_classes=2)
    pre = jax.jit(pre) if jit else pre
    out = np.asarray(pre(jax.random.key(0), batch(jnp.asarray(x) if as_jax else x, [0]))["image"])
    assert out.dtype == np.float32
    ref = x.astype(np.float32) / np.float32(255)
    # XLA turns x / 255 into x * (1 / 255): at most one float32 ulp from the exact quotient.
    np.testing.assert_allclose(out, ref, rtol=0, atol=np.finfo(np.float32).eps / 2)
    assert out.flat[0] == 0.0 and out.flat[255] == 1.0
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert len(np.unique(out)) == 256


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", ["", None, " | ", "|"])
def test_float_input_kept_and_empty_spec_is_identity(dtype, spec):
    x = (images() * 3 - 1).astype(dtype)  # outside [0, 1]: floats are never rescaled
    out = run(spec, x)
    assert out["image"].dtype == np.float32
    np.testing.assert_array_equal(out["image"], x.astype(np.float32))
    np.testing.assert_array_equal(out["label"], np.arange(N) % CLASSES)
    np.testing.assert_array_equal(out["index"], np.arange(N))


def test_transforms_run_left_to_right():
    x = images()
    np.testing.assert_array_equal(run("pad(3)|center_crop(16)", x)["image"], x)
    # The other order: crop first, then pad with zeros around the central 8x8 window.
    out = run("center_crop(8)|pad(4)", x)["image"]
    expected = np.pad(x[:, 4:12, 4:12], ((0, 0), (4, 4), (4, 4), (0, 0)))
    np.testing.assert_array_equal(out, expected)
    # normalize after pad normalizes the zero border too; before pad it stays exactly zero.
    border_after = run("pad(1)|normalize", x)["image"][:, 0, 0]
    np.testing.assert_allclose(border_after, np.broadcast_to(-np.divide(MEAN, STD), (N, C)),
                               rtol=1e-6)
    assert np.all(run("normalize|pad(1)", x)["image"][:, 0, 0] == 0)


def test_each_transform_gets_its_own_key():
    """fold_in(key, position): two hflips in a row draw different coins, so some (but not all)
    examples end up mirrored; repeating a draw would make the pair an identity."""
    x = images(n=32, h=4, w=4, c=1)
    out = run("hflip|hflip", x, labels=np.zeros(32, int))["image"]
    mirrored = [not np.array_equal(o, xi) for o, xi in zip(out, x)]
    assert 0 < sum(mirrored) < 32
    # And the position index, not the name, is what is folded in.
    key = jax.random.key(3)
    first = hflip()(jax.random.fold_in(key, 0), {"image": jnp.asarray(x)})
    both = hflip()(jax.random.fold_in(key, 1), first)
    pre = make_preprocess("hflip|hflip", num_classes=2)
    np.testing.assert_array_equal(pre(key, {"image": x})["image"], both["image"])


def test_parse_spec():
    assert parse_spec(" pad(2) | hflip(p=0.3)|| random_crop(24, padding=4) |normalize") == [
        ("pad", (2,), {}), ("hflip", (), {"p": 0.3}), ("random_crop", (24,), {"padding": 4}),
        ("normalize", (), {})]
    assert parse_spec("resize((8, 12))|normalize(mean=[0.5], std=(0.25,))") == [
        ("resize", ((8, 12),), {}), ("normalize", (), {"mean": [0.5], "std": (0.25,)})]
    assert parse_spec("") == []


# --------------------------------------------------------------- every transform, generically

# spec -> expected output image shape for (8, 16, 16, 3) inputs.
TABLE = {
    "pad(2)": (N, 20, 20, C),
    "pad(padding=0)": (N, H, W, C),
    "resize(8)": (N, 8, 8, C),
    "resize((24, 12))": (N, 24, 12, C),
    "center_crop(10)": (N, 10, 10, C),
    "center_crop((12, 6))": (N, 12, 6, C),
    "random_crop": (N, H, W, C),
    "random_crop(padding=4)": (N, H, W, C),
    "random_crop(12)": (N, 12, 12, C),
    "random_crop(size=(20, 10), padding=2)": (N, 20, 10, C),
    "hflip": (N, H, W, C),
    "hflip(p=0.3)": (N, H, W, C),
    "vflip(p=0.3)": (N, H, W, C),
    "random_resized_crop(8)": (N, 8, 8, C),
    "random_resized_crop(16, scale=(0.5, 1.0), ratio=(0.5, 2.0))": (N, 16, 16, C),
    "elastic(grid=4, sigma=2.0)": (N, H, W, C),  # (tests/test_segmentation.py: against SciPy)
    "normalize": (N, H, W, C),
    "normalize(mean=(0.1,), std=(2.0,))": (N, H, W, C),
    "mixup": (N, H, W, C),
    "mixup(alpha=1.0)": (N, H, W, C),
    "cutmix": (N, H, W, C),
    "cutmix(0.5)": (N, H, W, C),
    "trivial_augment": (N, H, W, C),  # (tests/test_autoaugment.py checks them against torchvision)
    "rand_augment(num_ops=1, magnitude=5)": (N, H, W, C),
}


def _name(spec):
    return spec.split("(")[0]


def test_table_covers_every_transform():
    assert {_name(s) for s in TABLE} == set(TRANSFORMS)
    assert RANDOM == {"random_crop", "hflip", "vflip", "random_resized_crop", "elastic", "mixup",
                      "cutmix", "trivial_augment", "rand_augment"}


@pytest.mark.parametrize("spec", list(TABLE))
def test_transform_shapes_ranges_and_determinism(spec):
    x = images()
    pre = make_preprocess(spec, num_classes=CLASSES, mean=MEAN, std=STD)
    b = batch(x)
    out, again, other = ({k: np.asarray(v) for k, v in pre(jax.random.key(key), b).items()}
                         for key in (0, 0, 1))

    assert out["image"].shape == TABLE[spec] and out["image"].dtype == np.float32
    np.testing.assert_array_equal(out["index"], np.arange(N))
    if _name(spec) in ("mixup", "cutmix"):
        assert out["label"].shape == (N, CLASSES) and out["label"].dtype == np.float32
        np.testing.assert_allclose(out["label"].sum(1), 1, rtol=1e-6)
        assert out["label"].min() >= 0
    else:
        np.testing.assert_array_equal(out["label"], b["label"])

    if _name(spec) == "normalize":
        mean, std = (np.array(MEAN), np.array(STD)) if spec == "normalize" else (0.1, 2.0)
        lo, hi = (0 - mean) / std, (1 - mean) / std
        assert np.all(out["image"] >= lo - 1e-6) and np.all(out["image"] <= hi + 1e-6)
    else:  # convex combinations / copies of [0, 1] pixels and zero padding
        assert out["image"].min() >= -1e-6 and out["image"].max() <= 1 + 1e-6

    for k in out:  # same key, same output
        np.testing.assert_array_equal(again[k], out[k])
    if _name(spec) in RANDOM and spec != "random_crop":  # random_crop alone: a no-op window
        assert not np.array_equal(other["image"], out["image"])
        if _name(spec) in ("mixup", "cutmix"):
            assert not np.array_equal(other["label"], out["label"])
    else:  # deterministic transforms ignore the key
        for k in out:
            np.testing.assert_array_equal(other[k], out[k])


def test_jit_same_key_same_output():
    """Every transform in one jitted pipeline (one compilation): reproducible bit for bit,
    key-dependent, and in agreement with the eager run."""
    spec = "random_crop(padding=4)|hflip|random_resized_crop(8)|normalize|mixup|cutmix"
    pre = make_preprocess(spec, num_classes=CLASSES, mean=MEAN, std=STD)
    b = batch(images())
    jitted = jax.jit(pre)
    j0, j0_again, j1 = (jitted(jax.random.key(k), b) for k in (0, 0, 1))
    eager = pre(jax.random.key(0), b)
    for k in ("image", "label", "index"):
        np.testing.assert_array_equal(np.asarray(j0[k]), np.asarray(j0_again[k]))
        np.testing.assert_allclose(np.asarray(j0[k]), np.asarray(eager[k]), rtol=1e-5,
                                   atol=1e-5)
    assert not np.array_equal(np.asarray(j0["image"]), np.asarray(j1["image"]))
    assert not np.array_equal(np.asarray(j0["label"]), np.asarray(j1["label"]))


# ----------------------------------------------------------------- deterministic references


@pytest.mark.parametrize("p", [0, 1, 3])
def test_pad_matches_numpy(p):
    x = images()
    np.testing.assert_array_equal(run(f"pad({p})", x)["image"],
                                  np.pad(x, ((0, 0), (p, p), (p, p), (0, 0))))


@pytest.mark.parametrize("size", [16, 10, 9, (12, 6), (7, 16), 1])
def test_center_crop_is_the_central_window(size):
    x = images()
    h, w = (size, size) if isinstance(size, int) else size
    out = run(f"center_crop({size!r})", x)["image"]
    assert out.shape == (N, h, w, C)
    # Which window is it? Every candidate offset is searched; the centre one (rounded down or
    # up for odd margins) must be the one.
    found = [(t, l) for t in range(H - h + 1) for l in range(W - w + 1)
             if np.array_equal(out, x[:, t:t + h, l:l + w])]
    assert len(found) == 1
    t, l = found[0]
    assert t in ((H - h) // 2, (H - h + 1) // 2) and l in ((W - w) // 2, (W - w + 1) // 2)
    if (H - h) % 2 == 0 and (W - w) % 2 == 0:
        np.testing.assert_array_equal(out, x[:, (H - h) // 2:(H + h) // 2,
                                              (W - w) // 2:(W + w) // 2])


@pytest.mark.parametrize("size", [8, 32, (5, 23)])
def test_resize_keeps_constant_images_constant(size):
    x = np.full((2, H, W, C), 0.37, np.float32)
    x[1] = np.array([0.0, 0.5, 1.0])  # constant per channel
    out = run(f"resize({size!r})", x)["image"]
    np.testing.assert_allclose(out[0], 0.37, atol=1e-6)
    np.testing.assert_allclose(out[1], np.broadcast_to([0.0, 0.5, 1.0], out[1].shape), atol=1e-6)


def test_resize_upsamples_linear_ramps_exactly():
    """Bilinear with pixel centres at half-integers: output pixel i of a 2x upsampling samples
    input coordinate (i + 0.5) / 2 - 0.5, clamped to the image; a linear ramp is reproduced."""
    y, x = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    ramp = np.stack([y, x, 2.0 * y - 0.5 * x], -1)[None].astype(np.float32)
    out = run("resize(32)", ramp)["image"][0]
    coord = np.clip((np.arange(32) + 0.5) / 2 - 0.5, 0, H - 1)
    cy, cx = np.meshgrid(coord, coord, indexing="ij")
    np.testing.assert_allclose(out, np.stack([cy, cx, 2 * cy - 0.5 * cx], -1), atol=1e-5)


@pytest.mark.parametrize("size", [32, 8, (24, 12), (5, 7)])
@pytest.mark.parametrize("image", ["smooth", "random"])
def test_resize_matches_pil_bilinear(size, image):
    """PIL's BILINEAR on float images, antialiased when shrinking (its filter widens with the
    scale), to float32 rounding: a resize without antialiasing misses by 0.01-0.4 here."""
    from PIL import Image
    h, w = (size, size) if isinstance(size, int) else size
    x = smooth() if image == "smooth" else images(n=1, c=1)
    ref = np.asarray(Image.fromarray(x[0, :, :, 0], mode="F").resize((w, h), Image.BILINEAR))
    out = run(f"resize({size!r})", x)["image"][0, :, :, 0]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_resize_there_and_back_on_smooth_images():
    x = smooth(c=C)
    out = run("resize(32)|resize(16)", x)["image"]
    np.testing.assert_allclose(out[:, 1:-1, 1:-1], x[:, 1:-1, 1:-1], atol=0.01)
    np.testing.assert_allclose(out, x, atol=0.05)


# ------------------------------------------------------------------------------ random_crop


def _window_offsets(out, padded):
    """For each example, every (top, left) at which `out` is a window of `padded`."""
    h, w = out.shape[1:3]
    return [[(t, l) for t in range(padded.shape[1] - h + 1) for l in range(padded.shape[2] - w + 1)
             if np.array_equal(o, p[t:t + h, l:l + w])] for o, p in zip(out, padded)]


@pytest.mark.parametrize("spec,p,size", [
    ("random_crop(padding=4)", 4, (H, W)), ("random_crop(padding=1)", 1, (H, W)),
    ("random_crop(12)", 0, (12, 12)), ("random_crop((10, 14), padding=2)", 2, (10, 14)),
    ("random_crop(size=20, padding=2)", 2, (20, 20))])
@pytest.mark.parametrize("key", [0, 1])
def test_random_crop_is_a_window_of_the_padded_input(spec, p, size, key):
    x = images()
    out = run(spec, x, key=key)["image"]
    assert out.shape == (N, *size, C)
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = _window_offsets(out, padded)
    assert all(len(o) == 1 for o in offsets), offsets  # random pixels: exactly one match each
    offsets = [o[0] for o in offsets]
    limit = (H + 2 * p - size[0], W + 2 * p - size[1])
    assert all(0 <= t <= limit[0] and 0 <= l <= limit[1] for t, l in offsets)
    if limit != (0, 0):  # per-example draws: the examples do not all share one offset
        assert len(set(offsets)) > 1


def test_random_crop_offsets_are_uniform():
    p, n = 2, 2000
    # Each image's pixels are their own positions (+1, so padding zeros are distinct): the
    # output's top-left pixel tells the offset.
    y, x = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    image = np.broadcast_to(np.stack([y + 1, x + 1], -1), (n, H, W, 2)).astype(np.float32)
    out = run(f"random_crop(padding={p})", image, labels=np.zeros(n, int))["image"]
    # Offset (t, l) puts padded pixel (t, l) = original (t - p, l - p) at the top left; the
    # first pixel inside the original image tells it.
    centre = out[:, p, p]  # original pixel (t - p + p, ...) = (t, l) -> value t + 1, l + 1
    tops, lefts = centre[:, 0].astype(int) - 1, centre[:, 1].astype(int) - 1
    for offs in (tops, lefts):
        freq = np.bincount(offs, minlength=2 * p + 1) / n
        assert len(freq) == 2 * p + 1
        np.testing.assert_allclose(freq, 1 / (2 * p + 1), atol=0.04)
    # Top and left are drawn independently.
    assert abs(np.corrcoef(tops, lefts)[0, 1]) < 0.1


# ------------------------------------------------------------------------------------ hflip


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_hflip_mirrors_whole_examples_with_probability_p(p):
    n = 1000
    x = images(n=n, h=3, w=4, c=2)
    out = run(f"hflip(p={p!r})", x, labels=np.zeros(n, int))["image"]
    same = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)  # every example is exactly one of the two
    if p in (0.0, 1.0):
        assert mirrored.mean() == p
    else:
        assert abs(mirrored.mean() - p) < 0.05


@pytest.mark.parametrize("p", [0, 1])
def test_hflip_integer_probability(p):
    x = images()
    out = run(f"hflip(p={p})", x)["image"]
    np.testing.assert_array_equal(out, x[:, :, ::-1] if p else x)


# ------------------------------------------------------------------------ random_resized_crop


def test_random_resized_crop_keeps_constant_images_constant():
    x = np.broadcast_to(np.array([0.3, 0.0, 1.0], np.float32), (N, H, W, C))
    for spec in ["random_resized_crop(8)", "random_resized_crop(16, scale=(0.5, 1))",
                 "random_resized_crop(16, scale=(0.01, 0.02), ratio=(0.2, 5.0))",
                 "random_resized_crop(8, scale=(0.9, 1), ratio=(0.2, 0.3))"]:
        for key in range(3):
            out = run(spec, x, key=key)["image"]
            np.testing.assert_allclose(out, np.broadcast_to([0.3, 0.0, 1.0], out.shape),
                                       atol=1e-6)


@pytest.mark.parametrize("size", [16, 8])
def test_random_resized_crop_of_the_whole_square_is_a_resize(size):
    x = images()
    full = f"random_resized_crop({size}, scale=(1, 1), ratio=(1, 1))"
    out = run(full, x)["image"]
    np.testing.assert_allclose(out, run(f"resize({size})", x)["image"], atol=1e-5)
    if size == H:
        np.testing.assert_allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("scale,ratio,crop", [
    (0.25, 1.0, (8, 8)),
    (0.25, 4.0, (4, 16)),     # ratio is w / h
    (0.25, 0.25, (16, 4)),
    (0.0625, 1.0, (4, 4)),
    (1.0, 4.0, (8, 16)),      # 32 wide does not fit: clipped to the image's 16
])
@pytest.mark.parametrize("key", [0, 1])
def test_random_resized_crop_window_from_ramps(scale, ratio, crop, key):
    """Channel 0 holds the row index, channel 1 the column index. Upsampling a crop of
    (ch, cw) at (top, left) to 16x16 samples input row top + (i + 0.5) * ch / 16 - 0.5 (clamped
    to the image): recover top/left from one pixel, then check every pixel, the window size
    and that the window lies inside the image."""
    out_size = 16
    y, x = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    ramp = np.broadcast_to(np.stack([y, x, y], -1), (N, H, W, C)).astype(np.float32)
    spec = f"random_resized_crop({out_size}, scale=({scale}, {scale}), ratio=({ratio}, {ratio}))"
    out = run(spec, ramp, key=key)["image"]
    ch, cw = crop
    i = np.arange(out_size)
    starts = []
    for o in out:
        # Row 8 samples top + 8.5 * ch / 16 - 0.5, always inside the image.
        top = o[8, 0, 0] - (8.5 * ch / out_size - 0.5)
        left = o[0, 8, 1] - (8.5 * cw / out_size - 0.5)
        assert -1e-4 <= top <= H - ch + 1e-4 and -1e-4 <= left <= W - cw + 1e-4
        rows = np.clip(top + (i + 0.5) * ch / out_size - 0.5, 0, H - 1)
        cols = np.clip(left + (i + 0.5) * cw / out_size - 0.5, 0, W - 1)
        np.testing.assert_allclose(o[..., 0], np.broadcast_to(rows[:, None], (16, 16)), atol=1e-4)
        np.testing.assert_allclose(o[..., 1], np.broadcast_to(cols[None, :], (16, 16)), atol=1e-4)
        starts.append((round(float(top), 3), round(float(left), 3)))
    if (ch, cw) != (H, W):
        assert len(set(starts)) > 1  # per-example windows


# -------------------------------------------------------------------------------- normalize


def test_normalize_defaults_to_dataset_stats():
    x = images()
    out = run("normalize", x)["image"]
    np.testing.assert_allclose(out, (x - np.array(MEAN)) / np.array(STD), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mean,std", [((0.1, 0.2, 0.9), (0.5, 1.0, 2.0)), ((0.5,), (0.25,))])
def test_normalize_explicit_values_override_dataset_stats(mean, std):
    x = images()
    out = run(f"normalize(mean={mean}, std={std})", x)["image"]
    np.testing.assert_allclose(out, (x - np.array(mean)) / np.array(std), rtol=1e-5, atol=1e-6)
    # Explicit values need no dataset stats at all.
    out2 = run(f"normalize(mean={mean}, std={std})", x, mean=(), std=())["image"]
    np.testing.assert_array_equal(out, out2)


def test_normalize_single_channel_dataset():
    x = images(c=1)
    out = run("normalize", x, mean=(0.2,), std=(0.5,))["image"]
    np.testing.assert_allclose(out, (x - 0.2) / 0.5, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec,kw,match", [
    ("normalize", dict(mean=(0.5, 0.5), std=(0.2, 0.2)), "2 means for 3-channel"),
    ("normalize(mean=(0.1, 0.2), std=(1.0, 1.0))", {}, "2 means for 3-channel"),
])
def test_normalize_wrong_channel_count(spec, kw, match):
    with pytest.raises(ValueError, match=match):
        run(spec, images(), **kw)
    with pytest.raises(ValueError, match=match):
        pre = make_preprocess(spec, num_classes=CLASSES, **{"mean": MEAN, "std": STD, **kw})
        jax.jit(pre)(jax.random.key(0), batch(images()))


# ---------------------------------------------------------------------------- mixup / cutmix


def _partner(label_row, i):
    """The partner j and the weight of example i, read from a soft label when every example of
    the batch has its own class (labels = arange(N))."""
    others = [j for j in np.flatnonzero(label_row > 1e-7) if j != i]
    assert len(others) <= 1, label_row
    return (others[0] if others else i), label_row[i]


MIX_KEYS = range(4)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
@pytest.mark.parametrize("key", MIX_KEYS)
def test_mixup_images_agree_with_labels(alpha, key):
    x = images()
    out = run(f"mixup(alpha={alpha})", x, key=key, labels=np.arange(N), num_classes=N)
    labels, image = out["label"], out["image"]
    assert labels.shape == (N, N)
    np.testing.assert_allclose(labels.sum(1), 1, rtol=1e-6)
    partners, weights = zip(*(_partner(labels[i], i) for i in range(N)))
    assert sorted(partners) == list(range(N))  # partners form a permutation of the batch
    for i, (j, lam) in enumerate(zip(partners, weights)):
        np.testing.assert_allclose(image[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)
    # One mixing weight per batch (examples that are their own partner keep weight 1).
    mixed = {round(float(w), 5) for i, (j, w) in enumerate(zip(partners, weights)) if j != i}
    assert len(mixed) <= 1


@pytest.mark.parametrize("alpha", [1.0, 0.3])
@pytest.mark.parametrize("key", MIX_KEYS)
def test_cutmix_pixels_agree_with_labels(alpha, key):
    x = images()
    out = run(f"cutmix(alpha={alpha})", x, key=key, labels=np.arange(N), num_classes=N)
    labels, image = out["label"], out["image"]
    assert labels.shape == (N, N)
    np.testing.assert_allclose(labels.sum(1), 1, rtol=1e-6)
    partners = []
    boxes = []
    for i in range(N):
        j, kept = _partner(labels[i], i)
        partners.append(j)
        own = np.all(image[i] == x[i], axis=-1)
        theirs = np.all(image[i] == x[j], axis=-1)
        assert np.all(own | theirs)  # every pixel (all channels) comes from x_i or x_j
        if j == i:
            assert kept == pytest.approx(1.0) and np.all(own)
            continue
        assert not np.any(own & theirs)  # random pixels: never both
        np.testing.assert_allclose(theirs.mean(), 1 - kept, atol=1e-6)
        np.testing.assert_allclose(labels[i, j], 1 - kept, atol=1e-6)
        # The pasted region is an axis-aligned box.
        np.testing.assert_array_equal(theirs, np.outer(theirs.any(1), theirs.any(0)))
        boxes.append(theirs)
    assert sorted(partners) == list(range(N))
    assert all(np.array_equal(b, boxes[0]) for b in boxes)  # one box per batch


def test_mixup_and_cutmix_actually_mix():
    """Guard against the checks above passing on a no-op: over a few keys, images change and
    labels get fractional weights."""
    x = images()
    for name in ("mixup", "cutmix"):
        fractional = 0
        for key in MIX_KEYS:
            out = run(name, x, key=key, labels=np.arange(N), num_classes=N)
            fractional += np.sum((out["label"] > 0.01) & (out["label"] < 0.99))
            if np.sum((out["label"] > 0.01) & (out["label"] < 0.99)):
                assert not np.array_equal(out["image"], x)
        assert fractional > 0, name



def _mixing_weights(name, alpha, draws=2000, n=8, size=32):
    """The weight each of `draws` batches (fixed keys) kept of its own examples: with
    labels = arange(n), row i of the soft labels holds it at [i, i] unless i is its own partner
    (then 1), so it is the batch's smallest diagonal entry."""
    pre = make_preprocess(f"{name}(alpha={alpha})", num_classes=n)
    x = jnp.zeros((n, size, size, 1))
    labels = jnp.arange(n)
    run_one = lambda key: jnp.diagonal(pre(key, {"image": x, "label": labels})["label"]).min()  # noqa: E731
    keys = jax.random.split(jax.random.key(1234), draws)
    return np.asarray(jax.jit(jax.vmap(run_one))(keys), np.float64)


def _cutmix_kept_reference(alpha, draws, size, seed):
    """The area cutmix keeps, by its documented recipe in NumPy: l ~ Beta(alpha, alpha), a box
    of side sqrt(1 - l) * size centred at a uniform point, clipped to the image, corners rounded."""
    rng = np.random.default_rng(seed)
    lam = rng.beta(alpha, alpha, draws)
    cut = np.sqrt(1 - lam) * size
    cy, cx = rng.uniform(0, size, draws), rng.uniform(0, size, draws)
    side = [np.round(np.clip(c + cut / 2, 0, size)) - np.round(np.clip(c - cut / 2, 0, size))
            for c in (cy, cx)]
    return 1 - side[0] * side[1] / size**2


@pytest.mark.parametrize("alpha", [0.2])  # each alpha compiles JAX's Beta sampler anew (seconds)
def test_mixup_weight_is_beta_alpha_alpha(alpha):
    """Over 2000 batches at fixed keys, mixup's weight follows Beta(alpha, alpha) (SciPy's
    Kolmogorov-Smirnov test), and the same test tells it from Beta(1, 1), what an `alpha`
    that is ignored would draw."""
    from scipy import stats

    lam = _mixing_weights("mixup", alpha)
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 0.01
    assert stats.kstest(lam, stats.uniform().cdf).pvalue < 1e-6


@pytest.mark.parametrize("alpha", [3.0])
def test_cutmix_kept_area_follows_beta_alpha_alpha(alpha):
    """Over 2000 batches at fixed keys, the area cutmix keeps has the distribution its recipe
    gives with l ~ Beta(alpha, alpha) (two-sample Kolmogorov-Smirnov test against a NumPy
    simulation), and not the one with l ~ Beta(1, 1)."""
    from scipy import stats

    kept = _mixing_weights("cutmix", alpha)
    reference = _cutmix_kept_reference(alpha, 20000, 32, seed=0)
    uniform = _cutmix_kept_reference(1.0, 20000, 32, seed=1)
    assert stats.ks_2samp(kept, reference).pvalue > 0.01
    assert stats.ks_2samp(kept, uniform).pvalue < 1e-6

def test_mixup_hard_labels_with_shared_classes():
    labels = np.array([0, 0, 1, 1, 2, 0, 1, 2])
    out = run("mixup(alpha=1.0)", images(), key=1, labels=labels, num_classes=4)["label"]
    assert out.shape == (N, 4)
    np.testing.assert_allclose(out.sum(1), 1, rtol=1e-6)
    assert np.all(out[:, 3] == 0)  # a class no example has gets no weight
    # Row i is lam * onehot(y_i) + (1 - lam) * onehot(y_partner), one lam for the batch: the
    # own class holds lam (or 1 when the partner shares it), any other class 1 - lam.
    own = out[np.arange(N), labels]
    other = out.sum(1) - own
    assert np.all((out > 0).sum(1) <= 2) and np.all(own > 0)
    mixed = other > 0
    assert mixed.any()  # this key does mix examples of different classes
    np.testing.assert_allclose(own[mixed], own[mixed][0], atol=1e-6)
    np.testing.assert_allclose(own[~mixed], 1, atol=1e-6)


def _dirichlet(n, k, seed):
    return np.random.default_rng(seed).dirichlet(np.ones(k), size=n).astype(np.float32)


@pytest.mark.parametrize("key", range(3))
def test_cutmix_mixes_soft_labels_by_area(key):
    x, soft = images(), _dirichlet(N, CLASSES, key)
    out = run("cutmix", x, key=key, labels=soft)
    assert out["label"].shape == (N, CLASSES)
    for i in range(N):
        # The partner is whichever example the pasted pixels come from.
        theirs = ~np.all(out["image"][i] == x[i], axis=-1)
        if not theirs.any():
            j, kept = i, 1.0
        else:
            pasted = out["image"][i][theirs]
            (j,) = [j for j in range(N) if j != i and np.all(pasted == x[j][theirs])]
            kept = 1 - theirs.mean()
        np.testing.assert_allclose(out["label"][i], kept * soft[i] + (1 - kept) * soft[j],
                                   atol=1e-6)


@pytest.mark.parametrize("key", range(3))
def test_mixup_mixes_soft_labels_like_pixels(key):
    x, soft = images(), _dirichlet(N, CLASSES, key + 10)
    out = run("mixup(alpha=1.0)", x, key=key, labels=soft)
    for i in range(N):
        o = out["image"][i]
        if np.allclose(o, x[i], atol=1e-6):
            candidates = [(i, 1.0)]
        else:  # least-squares weight against each possible partner; keep the one that fits
            candidates = []
            for j in range(N):
                if j == i:
                    continue
                d = (x[i] - x[j]).ravel()
                lam = float(np.dot(o.ravel() - x[j].ravel(), d) / np.dot(d, d))
                if np.allclose(o, lam * x[i] + (1 - lam) * x[j], atol=1e-5):
                    candidates.append((j, lam))
        assert len(candidates) == 1
        j, lam = candidates[0]
        np.testing.assert_allclose(out["label"][i], lam * soft[i] + (1 - lam) * soft[j],
                                   atol=1e-5)


@pytest.mark.parametrize("spec", ["mixup|cutmix", "cutmix|mixup", "mixup|mixup(alpha=1.0)"])
def test_mixing_twice_keeps_probabilities(spec):
    labels = np.arange(N) % CLASSES
    for key in range(3):
        out = run(spec, images(), key=key, labels=labels)["label"]
        assert out.shape == (N, CLASSES)
        assert out.min() >= 0
        np.testing.assert_allclose(out.sum(1), 1, rtol=1e-6)


def test_mixup_small_alpha_stays_finite():
    """Beta(0.05, 0.05) puts most of its mass next to 0 and 1: no NaN from 0 / 0."""
    pre = make_preprocess("mixup(alpha=0.05)|cutmix(alpha=0.05)", num_classes=N)
    for key in range(16):
        out = pre(jax.random.key(key), batch(images(), np.arange(N)))
        assert np.all(np.isfinite(out["image"])) and np.all(np.isfinite(out["label"]))
        np.testing.assert_allclose(np.asarray(out["label"]).sum(-1), 1, rtol=1e-5)


# ------------------------------------------------------------------------------------ errors


def test_unknown_transform_lists_valid_choices():
    with pytest.raises(ValueError, match="Unknown transform 'blur'") as e:
        make_preprocess("hflip|blur(3)", num_classes=CLASSES)
    for name in TRANSFORMS:
        assert name in str(e.value)


@pytest.mark.parametrize("spec,options", [
    ("hflip(q=0.5)", "p"),
    ("random_crop(pading=4)", "size, padding"),
    ("pad", "padding"),                       # a required option missing
    ("pad(1, 2)", "padding"),                 # too many positional values
    ("mixup(beta=0.2)", "alpha"),
    ("normalize(mean=(0.5,), sd=(0.2,))", "mean, std"),
    ("center_crop(sizes=3)", "size"),
    ("random_resized_crop(8, scales=(0.5, 1))", "size, scale, ratio"),
])
def test_bad_options_name_the_valid_ones(spec, options):
    with pytest.raises(ValueError, match=rf"Transform {_name(spec)}: .*Its options: {options}\."):
        make_preprocess(spec, num_classes=CLASSES, mean=MEAN, std=STD)


@pytest.mark.parametrize("spec", ["mixup(num_classes=3)", "normalize(dataset_mean=(0.5,))",
                                  "cutmix(alpha=1.0, num_classes=10)"])
def test_dataset_options_cannot_be_set_in_the_spec(spec):
    with pytest.raises(ValueError, match="come from the dataset"):
        make_preprocess(spec, num_classes=CLASSES, mean=MEAN, std=STD)


@pytest.mark.parametrize("spec", ["hflip(p=)", "pad(1", "pad(x)", "hflip(p=0.5))", "a.b",
                                  "pad(2) hflip", "1 + 2", "pad(padding=abs(2))",
                                  "transforms.pad(2)"])
def test_unparseable_spec(spec):
    with pytest.raises(ValueError, match=re.escape("Cannot read transform")):
        make_preprocess(f"normalize|{spec}", num_classes=CLASSES, mean=MEAN, std=STD)


@pytest.mark.parametrize("spec", ["hflip", "random_crop(padding=4)", "random_resized_crop(8)",
                                  "mixup", "cutmix(alpha=1.0)", "normalize|hflip"])
def test_eval_refuses_random_transforms(spec):
    with pytest.raises(ValueError, match="must be deterministic") as e:
        make_preprocess(spec, num_classes=CLASSES, mean=MEAN, std=STD, train=False)
    random = [_name(s) for s in spec.split("|") if _name(s) in RANDOM]
    assert str(random) in str(e.value)
    for name in set(TRANSFORMS) - RANDOM:  # and it names the deterministic ones
        assert name in str(e.value)
    make_preprocess(spec, num_classes=CLASSES, mean=MEAN, std=STD, train=True)  # fine in training


def test_eval_accepts_deterministic_transforms():
    pre = make_preprocess("pad(2)|center_crop(16)|resize(8)|normalize", num_classes=CLASSES,
                          mean=MEAN, std=STD, train=False)
    out = pre(jax.random.key(0), batch(images()))
    assert out["image"].shape == (N, 8, 8, C)


@pytest.mark.parametrize("spec", ["center_crop(20)", "center_crop((8, 17))", "random_crop(17)",
                                  "random_crop(size=(16, 25), padding=4)",
                                  "pad(1)|center_crop(19)"])
def test_cropping_larger_than_the_image(spec):
    pre = make_preprocess(spec, num_classes=CLASSES)
    with pytest.raises(ValueError, match="cannot cut"):
        pre(jax.random.key(0), batch(images()))


def test_normalize_without_dataset_stats():
    with pytest.raises(ValueError, match="no mean/std"):
        make_preprocess("normalize", num_classes=CLASSES)
    with pytest.raises(ValueError, match="no mean/std"):
        make_preprocess("normalize(mean=(0.5,))", num_classes=CLASSES)


@pytest.mark.parametrize("spec,match", [
    ("pad(-1)", "non-negative"), ("pad(1.5)", "non-negative"),
    ("random_crop(padding=-2)", "non-negative"),
    ("resize(0)", "positive int"), ("resize((8, 8, 8))", "positive int"),
    ("center_crop((2.5, 3))", "positive int"), ("random_crop(size=(4,))", "positive int"),
    ("hflip(p=1.5)", r"\[0, 1\]"), ("hflip(-0.1)", r"\[0, 1\]"),
    ("mixup(alpha=0)", "alpha must be > 0"), ("cutmix(-1.0)", "alpha must be > 0"),
    ("random_resized_crop(8, scale=(0.5, 0.2))", "scale"),
    ("random_resized_crop(8, scale=(0.0, 1.0))", "scale"),
    ("random_resized_crop(8, scale=(0.5, 1.5))", "scale"),
    ("random_resized_crop(8, ratio=(2.0, 1.0))", "ratio"),
    ("normalize(mean=(0.5, 0.5), std=(0.2,))", "as many means as stds"),
    ("normalize(mean=(0.5,), std=(0.0,))", "stds > 0"),
])
def test_bad_option_values(spec, match):
    with pytest.raises(ValueError, match=match):
        make_preprocess(spec, num_classes=CLASSES, mean=MEAN, std=STD)


@pytest.mark.parametrize("spec,match", [
    ("center_crop(2.5)", "positive int"), ("resize(8.0)", "positive int"),
    ("random_crop(size=12.0)", "positive int"), ("resize(True)", "positive int"),
    ("random_resized_crop(8, scale=0.5)", "scale must be a .low, high. pair"),
    ("normalize(mean='a', std=0.2)", "mean must be a number"),
])
def test_bad_option_types_are_value_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        make_preprocess(spec, num_classes=CLASSES)


def test_normalize_leaves_a_constant_channel_unscaled():
    x = images()
    out = np.asarray(make_preprocess("normalize", num_classes=CLASSES, mean=(0.5, 0.2, 0.0),
                                     std=(0.25, 0.0, 0.5))(jax.random.key(0), {"image": x})["image"])
    np.testing.assert_allclose(out[..., 1], x[..., 1] - 0.2, atol=1e-6)
    np.testing.assert_allclose(out[..., 0], (x[..., 0] - 0.5) / 0.25, atol=1e-5)
