"""RandAugment and TrivialAugmentWide as pure batch transforms, equal to torchvision's.

    config.train_transforms = "trivial_augment|normalize"
    config.train_transforms = "random_crop(padding=4)|hflip|rand_augment(2, 9)|normalize"

`trivial_augment(num_magnitude_bins=31)` is torchvision.transforms.v2.TrivialAugmentWide: per
image, one op drawn uniformly from OPS and one magnitude bin drawn uniformly, its sign flipped
with probability 1/2 for the signed ops. `rand_augment(num_ops=2, magnitude=9,
num_magnitude_bins=31)` is torchvision.transforms.v2.RandAugment: per image, `num_ops` ops
drawn uniformly with replacement and applied in turn at the fixed magnitude bin, each with a
random sign where signed. The op lists and magnitude ranges are torchvision's (`_SPACES`).

The ops work on the 0-255 grid as torchvision's do on uint8 tensors: the [0, 1] input is
quantized with round(x * 255) (exact for images that came from uint8, clipped to [0, 1] first),
each op computes with torchvision's uint8 semantics (blends in float32, clamped and truncated
to uint8; posterize's bit masks; equalize's histogram lookup; sharpness keeping the border),
and the result is divided by 255 again. So place them before `resize` and `normalize`, on
images that still hold their 256 levels. Geometric ops (shear, translate, rotate) sample by
nearest neighbour (torchvision's default), fill the image with 0 (torchvision's `fill=None`)
and move dense targets (segmentation masks) the same way, filling them with `fill` (the ignore
value); photometric ops leave the targets alone.

Static shapes: each applied op computes all eight photometric ops for the whole batch and
each image keeps the one it drew (`jnp.select`); the five geometric ops share one gather (each
image samples through its own affine matrix, the identity's for the other ops). That is fine
for CPU-sized images and costs memory and time on large ones (figures in the README's
transforms section). Bit-exactness needs torch's float32 rounding, which XLA's fused
multiply-adds and reciprocal divisions would change: see "float32 arithmetic as torch's"
below. Images up to 4096 pixels a side.

`apply_op(name, images, magnitude)` runs one op alone on a batch of 0-255 images (the tests
compare it with torchvision.transforms.v2.functional); `draw_ops` is the per-image draw.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
       "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
SIGNED = GEOMETRIC + ("Brightness", "Color", "Contrast", "Sharpness")
PHOTOMETRIC = ("Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
               "AutoContrast", "Equalize")

# Magnitude ranges (torchvision's _AUGMENTATION_SPACE): the top of each linspace(0, top, bins),
# a function of (h, w) for translations; posterize keeps round(8 - bin / ((bins - 1) / d)) bits.
_SPACES = {
    "rand_augment": {"shear": 0.3, "translate": (lambda h, w: 150.0 / 331.0 * w,
                                                 lambda h, w: 150.0 / 331.0 * h),
                     "rotate": 30.0, "enhance": 0.9, "posterize": 4},
    "trivial_augment": {"shear": 0.99, "translate": (lambda h, w: 32.0, lambda h, w: 32.0),
                        "rotate": 135.0, "enhance": 0.99, "posterize": 6},
}


def _linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace's formula in float32: the first half counts up from start, the second
    down from end. (torch's vectorized CPU kernel can differ from it in the last bit.)"""
    start, end = np.float32(start), np.float32(end)
    step = (end - start) / np.float32(max(steps - 1, 1))
    i = np.arange(steps)
    up = start + step * i.astype(np.float32)
    down = end - step * (steps - 1 - i).astype(np.float32)
    return np.where(i < steps // 2, up, down).astype(np.float32)


def magnitudes(space: str, num_bins: int, h: int, w: int) -> np.ndarray:
    """(len(OPS), num_bins) float32: torchvision's magnitude of each op at each bin (0 for the
    ops without one)."""
    s = _SPACES[space]
    lin = lambda top: _linspace(0.0, top, num_bins)  # noqa: E731
    table = {
        "ShearX": lin(s["shear"]), "ShearY": lin(s["shear"]),
        "TranslateX": lin(s["translate"][0](h, w)), "TranslateY": lin(s["translate"][1](h, w)),
        "Rotate": lin(s["rotate"]),
        **{op: lin(s["enhance"]) for op in ("Brightness", "Color", "Contrast", "Sharpness")},
        "Posterize": np.round(np.float32(8) - np.arange(num_bins).astype(np.float32)
                              / np.float32((num_bins - 1) / s["posterize"])),
        "Solarize": _linspace(1.0, 0.0, num_bins),
    }
    zeros = np.zeros(num_bins, np.float32)
    return np.stack([table.get(op, zeros) for op in OPS]).astype(np.float32)


# ------------------------------------------------------------- float32 arithmetic as torch's
# torch rounds some products on their own and fuses others into multiply-adds (its blends are
# fma(other, 1 - ratio, x * ratio)); XLA fuses multiplies into adds where its compiler likes,
# and turns x / broadcast(d) into x * (1 / d). Either changes the last bit, and the truncation
# to uint8 (or a tie in nearest-neighbour sampling) turns that bit into a whole level or pixel.
# So products are written as sums of exact products (each factor split into two halves of 12
# significant bits) and sums as error-free TwoSums: no fusing can change those, and each result
# is rounded once, where torch rounds it.


def _split(a):
    """a == hi + lo exactly, each with at most 12 significant bits."""
    hi = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(jnp.asarray(a, jnp.float32), jnp.int32) & ~0xFFF, jnp.float32)
    return hi, a - hi


def _exact_products(y, a, y_is_small_int=True):
    """Terms summing exactly to y * a; y an integer below 2**12 in magnitude, or any float32."""
    ah, al = _split(a)
    if y_is_small_int:
        return [y * ah, y * al]
    yh, yl = _split(y)
    return [yh * ah, yh * al, yl * ah, yl * al]


def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _rounded_sum(terms):
    """The sum of float32 terms, as if added in twice the precision and rounded once (Ogita,
    Rump and Oishi's Sum2): the once-rounded sum unless it lies within ~2**-40 of a rounding
    boundary without sitting on it."""
    s, err = terms[0], 0.0
    for t in terms[1:]:
        s, e = _two_sum(s, t)
        err = err + e
    return s + err


def _mul(y, a):
    """float32 y * a rounded once, y an integer below 2**12."""
    return _rounded_sum(_exact_products(y, a))


def _fma(y, a, p, y_is_small_int=True):
    """y * a + p rounded once (a fused multiply-add)."""
    return _rounded_sum([p] + _exact_products(y, a, y_is_small_int))


def _divide(x, d):
    """x / d correctly rounded, d broadcast against x: a d that XLA sees as a broadcast would
    be turned into x * (1 / d)."""
    return x / jnp.where(x == x, d, 1.0)  # (x == x: never false for these, but not foldable)


# ----------------------------------------------------------------------- geometric ops' grids


def _inverse_affine(center, angle, translate, shear) -> list[float]:
    """torchvision's _get_inverse_affine_matrix (scale 1), in float64: output pixel -> input."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += cx - m[0] * (cx + tx) - m[1] * (cy + ty)
    m[5] += cy - m[3] * (cx + tx) - m[4] * (cy + ty)
    return m


def sampling_matrix(op: str, magnitude: float, h: int, w: int) -> np.ndarray:
    """(3, 2) float32: the matrix torchvision's _affine_grid multiplies [x, y, 1] by (x, y
    relative to the image centre) to get grid_sample's normalized input coordinates, for `op`
    at `magnitude` as torchvision's RandAugment calls F.affine / F.rotate; the identity's for
    the non-geometric ops."""
    corner = [-w * 0.5, -h * 0.5]  # F.affine's center=[0, 0]: shear about the top-left corner
    if op == "ShearX":
        m = _inverse_affine(corner, 0.0, [0, 0], [math.degrees(math.atan(magnitude)), 0.0])
    elif op == "ShearY":
        m = _inverse_affine(corner, 0.0, [0, 0], [0.0, math.degrees(math.atan(magnitude))])
    elif op == "TranslateX":
        m = _inverse_affine([0.0, 0.0], 0.0, [float(int(magnitude)), 0.0], [0.0, 0.0])
    elif op == "TranslateY":
        m = _inverse_affine([0.0, 0.0], 0.0, [0.0, float(int(magnitude))], [0.0, 0.0])
    elif op == "Rotate":
        m = _inverse_affine([0.0, 0.0], -(magnitude % 360), [0.0, 0.0], [0.0, 0.0])
    else:
        m = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    theta = np.asarray(m, np.float32).reshape(2, 3)
    return theta.T / np.array([0.5 * w, 0.5 * h], np.float32)


def _source_pixels(rt: jax.Array, h: int, w: int):
    """(rows, cols, inside) of the input pixel nearest to each output pixel's sample point, as
    grid_sample(mode="nearest", align_corners=False) finds it (round half to even).

    Shears and rotations put some sample points exactly half-way between two pixels (e.g. shear
    0.2 on row 2: 0.2 * 2.5); torch's float32 rounding then picks the pixel. torch rounds each
    product and sum on its own (no fused multiply-add), and so does this (see `_mul`)."""
    # 2x, 2y: integers; x * a == 2x * (a / 2) exactly.
    x2 = jnp.asarray(2 * _linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w))[None, :]
    y2 = jnp.asarray(2 * _linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h))[:, None]

    def source(a, b, c, size):  # ((x a + y b + c + 1) size - 1) / 2, as torch rounds it
        g = (_mul(x2, a * 0.5) + _mul(y2, b * 0.5)) + c
        return jnp.round((_mul(jnp.float32(size), g + 1.0) - 1.0) * 0.5)

    ix = source(rt[0, 0], rt[1, 0], rt[2, 0], w)
    iy = source(rt[0, 1], rt[1, 1], rt[2, 1], h)
    inside = (ix >= 0) & (ix <= w - 1) & (iy >= 0) & (iy <= h - 1)
    rows = jnp.clip(iy, 0, h - 1).astype(jnp.int32)
    cols = jnp.clip(ix, 0, w - 1).astype(jnp.int32)
    return rows, cols, inside


def _sample(x: jax.Array, rows, cols, inside, fill) -> jax.Array:
    """x (H, W, ...) at (rows, cols), `fill` outside."""
    inside = inside.reshape(inside.shape + (1,) * (x.ndim - 2))
    return jnp.where(inside, x[rows, cols], jnp.asarray(fill, x.dtype))


# --------------------------------------------------------------------- photometric ops (uint8)
# Each takes x (N, H, W, C) float32 holding integers 0..255 and m (N, 1, 1, 1) the signed
# magnitude, and returns what torchvision's uint8 kernel returns, as float32.


def _to_uint8(x):
    """clamp_(0, 255) then .to(torch.uint8): truncation."""
    return jnp.floor(jnp.clip(x, 0.0, 255.0))


def _blend(x, other, m, other_is_small_int=True):
    """torchvision's _blend(x, other, ratio=1 + m) on uint8: fma(other, 1 - ratio, x * ratio)
    in float32, ratio rounded to float32, 1 - ratio == -m; clamped and truncated."""
    return _to_uint8(_fma(other, -m, _mul(x, 1.0 + m), other_is_small_int))


def _grayscale(x):
    """floor(0.2989 r + 0.587 g + 0.114 b) as torchvision computes it for uint8 RGB
    (r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114): two fused multiply-adds)."""
    r, g, b = x[..., 0:1], x[..., 1:2], x[..., 2:3]
    gray = _fma(b, np.float32(0.114), _fma(g, np.float32(0.587), _mul(r, np.float32(0.2989))))
    return jnp.floor(gray)


def brightness(x, m):
    return _to_uint8(_mul(x, 1.0 + m))


def color(x, m):
    return x if x.shape[-1] == 1 else _blend(x, _grayscale(x), m)


def contrast(x, m):
    gray = _grayscale(x) if x.shape[-1] == 3 else x
    # A sum of integers: exact in float32 below 2**24 (images up to 65,793 pixels), whatever the
    # order; then one division, as torch.mean.
    total = jnp.sum(gray.astype(jnp.int32), axis=(1, 2, 3), keepdims=True).astype(jnp.float32)
    mean = _divide(total, np.float32(gray.shape[1] * gray.shape[2]))
    return _blend(x, mean, m, other_is_small_int=False)


def sharpness(x, m):
    h, w = x.shape[1:3]
    if h <= 2 or w <= 2:
        return x
    a, b = np.float32(1 / 13), np.float32(5 / 13)
    inner = x[:, 1:-1, 1:-1]
    blurred = sum(x[:, i:h - 2 + i, j:w - 2 + j] * (b if (i, j) == (1, 1) else a)
                  for i in range(3) for j in range(3))
    blurred = jnp.round(blurred)
    inner = _to_uint8(_fma(blurred - inner, -m, inner))
    return x.at[:, 1:-1, 1:-1].set(inner)


def posterize(x, m):
    bits = jnp.clip(m.astype(jnp.int32), 0, 8)  # (other ops' magnitudes reach here too)
    mask = ((1 << bits) - 1) << (8 - bits)
    return (x.astype(jnp.int32) & mask).astype(jnp.float32)


def solarize(x, m):
    threshold = m * 255.0  # torch compares uint8 with the float32 of 255 * magnitude
    return jnp.where(x >= threshold, 255.0 - x, x)


def autocontrast(x, m):
    lo = jnp.min(x, axis=(1, 2), keepdims=True)
    hi = jnp.max(x, axis=(1, 2), keepdims=True)
    flat = hi == lo
    inv_scale = jnp.where(flat, 1.0, (hi - lo) * np.float32(1.0 / 255))
    return _to_uint8(_divide(x - jnp.where(flat, 0.0, lo), inv_scale))


def _equalize_channel(v):
    """One channel (H, W) of integers 0..255: PIL's equalize as torchvision computes it."""
    flat = v.reshape(-1).astype(jnp.int32)
    hist = jnp.zeros(256, jnp.int32).at[flat].add(1)
    cum = jnp.cumsum(hist)
    step = (flat.size - hist[jnp.argmax(cum)]) // 255  # pixels below the top level / 255
    lut = jnp.clip((cum[:-1] + step // 2) // jnp.maximum(step, 1), 0, 255)
    lut = jnp.concatenate([jnp.zeros(1, jnp.int32), lut])
    return jnp.where(step == 0, v, lut[flat].reshape(v.shape).astype(v.dtype))


def equalize(x, m):
    per_image = jax.vmap(_equalize_channel, in_axes=2, out_axes=2)
    return jax.vmap(per_image)(x)


_PHOTOMETRIC_FNS = {"Brightness": brightness, "Color": color, "Contrast": contrast,
                    "Sharpness": sharpness, "Posterize": posterize, "Solarize": solarize,
                    "AutoContrast": autocontrast, "Equalize": equalize}


# ------------------------------------------------------------------------------ applying ops


def apply_ops(images, op, m, rt, targets=(), fill=255):
    """One op per image: images (N, H, W, C) float32 on the 0-255 grid, op (N,) int indices
    into OPS, m (N,) signed magnitudes, rt (N, 3, 2) sampling matrices (`sampling_matrix`),
    targets a tuple of (N, H, W) masks. Returns (images, targets)."""
    n, h, w, c = images.shape
    if c not in (1, 3) or max(h, w) > 4096:
        raise ValueError(f"rand_augment/trivial_augment: images must have 1 or 3 channels "
                         f"(as torchvision's ops) and at most 4096 pixels a side, got "
                         f"{h}x{w}x{c}.")
    rows, cols, inside = jax.vmap(lambda r: _source_pixels(r, h, w))(rt)
    move = jax.vmap(_sample, in_axes=(0, 0, 0, 0, None))
    moved = move(images, rows, cols, inside, 0.0)
    targets = tuple(move(t, rows, cols, inside, fill) for t in targets)
    m = m.reshape(n, 1, 1, 1)
    chosen = op.reshape(n, 1, 1, 1)
    out = jnp.select([chosen == OPS.index(name) for name in PHOTOMETRIC],
                     [_PHOTOMETRIC_FNS[name](moved, m) for name in PHOTOMETRIC], moved)
    return out, targets


@jax.jit
def _apply_ops_jit(images, op, m, rt):
    return apply_ops(images, op, m, rt)[0]


def apply_op(name: str, image, magnitude: float = 0.0):
    """One op (a name in OPS) at `magnitude` (signed, as torchvision's _apply_image_or_video_
    transform takes it) on a batch of images (N, H, W, C) holding integers 0..255 (any dtype);
    returns float32 on the same grid."""
    if name not in OPS:
        raise ValueError(f"Unknown op {name!r}. Valid choices: {', '.join(OPS)}.")
    image = jnp.asarray(image, jnp.float32)
    n, h, w = image.shape[:3]
    rt = np.broadcast_to(sampling_matrix(name, magnitude, h, w), (n, 3, 2))
    return _apply_ops_jit(image, jnp.full((n,), OPS.index(name)),
                          jnp.full((n,), magnitude, jnp.float32), jnp.asarray(rt))


# -------------------------------------------------------------------------- the two policies


def draw_ops(key, n: int, num_ops: int, num_bins: int, magnitude: int | None = None):
    """The per-image draws, each (num_ops, n) int32: op indices into OPS (uniform), magnitude
    bins (uniform, or all `magnitude`), and 1 where a signed op's magnitude is negated."""
    k_op, k_bin, k_sign = jax.random.split(key, 3)
    op = jax.random.randint(k_op, (num_ops, n), 0, len(OPS))
    bins = (jax.random.randint(k_bin, (num_ops, n), 0, num_bins) if magnitude is None
            else jnp.full((num_ops, n), magnitude, jnp.int32))
    negative = jax.random.bernoulli(k_sign, 0.5, (num_ops, n)).astype(jnp.int32)
    return op, bins, negative


def _tables(space: str, num_bins: int, h: int, w: int):
    """Signed magnitudes (OPS, bins, 2) and sampling matrices (OPS, bins, 2, 3, 2), [..., 1]
    the negated draw."""
    mags = magnitudes(space, num_bins, h, w)
    signs = np.array([[1.0, -1.0 if op in SIGNED else 1.0] for op in OPS], np.float32)
    signed = (mags[:, :, None] * signs[:, None, :]).astype(np.float32)
    rts = np.stack([[[sampling_matrix(op, float(signed[i, b, s]), h, w) for s in range(2)]
                     for b in range(num_bins)] for i, op in enumerate(OPS)])
    return signed, rts


def _augment(space, num_ops, num_bins, magnitude, targets, fill):
    @jax.jit  # (inlined in the train step's jit; spares eager callers op-by-op dispatch)
    def run(key, image, moved):
        n, h, w, _ = image.shape
        signed, rts = (jnp.asarray(t) for t in _tables(space, num_bins, h, w))
        op, bins, negative = draw_ops(key, n, num_ops, num_bins, magnitude)
        x = jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0)
        for i in range(num_ops):
            x, moved = apply_ops(x, op[i], signed[op[i], bins[i], negative[i]],
                                 rts[op[i], bins[i], negative[i]], moved, fill)
        return x / 255.0, moved

    def fn(key, batch):
        if num_ops == 0:
            return batch
        image, moved = run(key, batch["image"], tuple(batch[k] for k in targets))
        return {**batch, "image": image, **dict(zip(targets, moved))}

    return fn


def _check_bins(name: str, num_magnitude_bins) -> None:
    if not (isinstance(num_magnitude_bins, int) and not isinstance(num_magnitude_bins, bool)
            and num_magnitude_bins >= 2):
        raise ValueError(f"{name}: num_magnitude_bins must be an int >= 2, got "
                         f"{num_magnitude_bins!r}.")


def trivial_augment(num_magnitude_bins: int = 31, *, targets: tuple = (), fill: int = 255):
    """torchvision.transforms.v2.TrivialAugmentWide (see the module doc)."""
    _check_bins("trivial_augment", num_magnitude_bins)
    return _augment("trivial_augment", 1, num_magnitude_bins, None, targets, fill)


def rand_augment(num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31, *,
                 targets: tuple = (), fill: int = 255):
    """torchvision.transforms.v2.RandAugment (see the module doc)."""
    _check_bins("rand_augment", num_magnitude_bins)
    if not (isinstance(num_ops, int) and not isinstance(num_ops, bool) and num_ops >= 0):
        raise ValueError(f"rand_augment: num_ops must be an int >= 0, got {num_ops!r}.")
    if not (isinstance(magnitude, int) and not isinstance(magnitude, bool)
            and 0 <= magnitude <= num_magnitude_bins - 1):
        raise ValueError(f"rand_augment: magnitude must be an int in [0, "
                         f"{num_magnitude_bins - 1}] (num_magnitude_bins - 1), got {magnitude!r}.")
    return _augment("rand_augment", num_ops, num_magnitude_bins, magnitude, targets, fill)
