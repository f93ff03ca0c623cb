"""Preprocessing and augmentation as pure batch functions, run on device inside the jitted step.

A config names them in a spec string, applied left to right:

    config.train_transforms = "random_crop(padding=4)|hflip|normalize|mixup(alpha=0.2)"
    config.eval_transforms = "normalize"

`make_preprocess(spec, num_classes=..., mean=..., std=...)` turns the spec into one function
`preprocess(key, batch) -> batch` on {'image': (N, H, W, C), 'label': (N,) or (N, classes)}.
Dense targets (`targets=('label',)`: a segmentation mask (N, H, W)) move with the image in
every geometric transform, by nearest neighbour (never blended), and pad with `fill` (the
ignore value); `normalize` touches the image alone; a task refuses transforms that make no
sense for its targets (`refused`: segmentation refuses mixup and cutmix).
It first brings images to float32 on the [0, 1] scale (uint8 is divided by 255), then runs
each transform with its own key, `fold_in(key, position)`: the output depends on the key and
the batch alone. Per-example randomness (crops, flips) comes from per-example draws of that
key; mixup and cutmix mix each example with another of the same batch and turn the labels
into class probabilities, mixed in the same proportion as the pixels.

| transform | what it does |
| --- | --- |
| pad(padding) | zero-pad each side by `padding` pixels |
| resize(size) | bilinear resize to size x size (or a (h, w) pair) |
| center_crop(size) | the central size x size window |
| random_crop(size=None, padding=0) | pad, then a random size x size window (default: input size) |
| hflip(p=0.5) | mirror left-right with probability p |
| vflip(p=0.5) | mirror top-bottom with probability p (for images with no "up": cells, satellites) |
| random_resized_crop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) | Inception-style: a random area fraction and aspect ratio, resized to size x size |
| elastic(grid=3, sigma=10.0) | U-Net's elastic deformation: a grid x grid field of N(0, sigma^2)-pixel displacements, bicubic to every pixel, borders reflected |
| normalize(mean=None, std=None) | (x - mean) / std per channel; default: the dataset's |
| mixup(alpha=0.2) | x = l x + (1 - l) x[perm], same for labels, l ~ Beta(alpha, alpha) |
| cutmix(alpha=1.0) | paste a random box of x[perm]; labels mixed by the box's area |
| trivial_augment(num_magnitude_bins=31) | TrivialAugmentWide: one random op, random magnitude |
| rand_augment(num_ops=2, magnitude=9, num_magnitude_bins=31) | RandAugment: num_ops random ops |

trivial_augment and rand_augment are torchvision's, op for op on the 0-255 grid (autoaugment.py):
place them before resize and normalize.

To add one: write a factory `name(**options) -> fn(key, batch) -> batch` and add it to TRANSFORMS.
"""

from __future__ import annotations

import ast
import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp

from cnn_jax.data.autoaugment import rand_augment, trivial_augment

Batch = dict
Transform = Callable[[jax.Array, Batch], Batch]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _size_pair(size, name: str) -> tuple[int, int]:
    pair = (size, size) if _is_int(size) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(pair) != 2 or not all(_is_int(s) and s > 0 for s in pair):
        raise ValueError(f"{name}: size must be a positive int or an (h, w) pair, got {size!r}.")
    return pair


def _range(value, name: str) -> tuple[float, float]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) for v in value)):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}.")
    return float(value[0]), float(value[1])


def _floats(value, name: str) -> tuple[float, ...]:
    values = value if isinstance(value, (tuple, list)) else (value,)
    if not values or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{name} must be a number or a tuple of numbers, got {value!r}.")
    return tuple(float(v) for v in values)


def _check_fits(name: str, image: jax.Array, size: tuple[int, int]) -> None:
    h, w = image.shape[1:3]
    if size[0] > h or size[1] > w:
        raise ValueError(f"{name}: cannot cut {size[0]}x{size[1]} from {h}x{w} images; "
                         f"pad or resize first.")


def _with_image(batch: Batch, image: jax.Array) -> Batch:
    return {**batch, "image": image}


def _move(batch: Batch, image_fn: Callable, target_fn: Callable, targets: tuple) -> Batch:
    """The batch with `image_fn` applied to its image and `target_fn` to its dense targets
    ((N, H, W) arrays, run as (N, H, W, 1))."""
    out = {**batch, "image": image_fn(batch["image"])}
    for k in targets:
        out[k] = target_fn(batch[k][..., None])[..., 0]
    return out


def pad(padding: int, *, targets: tuple = (), fill: int = 255) -> Transform:
    if not _is_int(padding) or padding < 0:
        raise ValueError(f"pad: padding must be a non-negative int, got {padding!r}.")

    def fn(key, batch):
        p = ((0, 0), (padding, padding), (padding, padding), (0, 0))
        return _move(batch, lambda x: jnp.pad(x, p),
                     lambda m: jnp.pad(m, p, constant_values=fill), targets)

    return fn


def _resize_nearest(mask: jax.Array, h: int, w: int) -> jax.Array:
    """(N, H, W, 1) ints -> (N, h, w, 1): each output pixel takes the input pixel under its
    centre (as jax.image.resize's "nearest", kept integer)."""
    rows = jnp.floor((jnp.arange(h) + 0.5) * mask.shape[1] / h).astype(jnp.int32)
    cols = jnp.floor((jnp.arange(w) + 0.5) * mask.shape[2] / w).astype(jnp.int32)
    return mask[:, rows][:, :, cols]


def resize(size, *, targets: tuple = ()) -> Transform:
    h, w = _size_pair(size, "resize")

    def fn(key, batch):
        image = batch["image"]
        shape = (image.shape[0], h, w, image.shape[3])
        return _move(batch, lambda x: jax.image.resize(x, shape, "bilinear"),
                     lambda m: _resize_nearest(m, h, w), targets)

    return fn


def center_crop(size, *, targets: tuple = ()) -> Transform:
    size = _size_pair(size, "center_crop")

    def fn(key, batch):
        image = batch["image"]
        _check_fits("center_crop", image, size)
        top, left = (image.shape[1] - size[0]) // 2, (image.shape[2] - size[1]) // 2
        crop = lambda x: x[:, top:top + size[0], left:left + size[1]]  # noqa: E731
        return _move(batch, crop, crop, targets)

    return fn


def random_crop(size=None, padding: int = 0, *, targets: tuple = (), fill: int = 255
                ) -> Transform:
    """With padding p and no size: a random translation by up to p pixels (CIFAR's standard)."""
    pad_fn = pad(padding, targets=targets, fill=fill)
    size = None if size is None else _size_pair(size, "random_crop")

    def fn(key, batch):
        n, h, w, c = batch["image"].shape
        ch, cw = size or (h, w)
        batch = pad_fn(key, batch)
        image = batch["image"]
        _check_fits("random_crop", image, (ch, cw))
        top = jax.random.randint(jax.random.fold_in(key, 0), (n,), 0, image.shape[1] - ch + 1)
        left = jax.random.randint(jax.random.fold_in(key, 1), (n,), 0, image.shape[2] - cw + 1)
        crop = jax.vmap(lambda x, t, l: jax.lax.dynamic_slice(x, (t, l, 0), (ch, cw, x.shape[2])))
        return _move(batch, lambda x: crop(x, top, left), lambda m: crop(m, top, left), targets)

    return fn


def hflip(p: float = 0.5, *, targets: tuple = ()) -> Transform:
    if not (isinstance(p, (int, float)) and 0 <= p <= 1):
        raise ValueError(f"hflip: p must lie in [0, 1], got {p!r}.")
    p = float(p)

    def fn(key, batch):
        flip = jax.random.bernoulli(key, p, (batch["image"].shape[0], 1, 1, 1))
        mirror = lambda x: jnp.where(flip, x[:, :, ::-1], x)  # noqa: E731
        return _move(batch, mirror, mirror, targets)

    return fn


def vflip(p: float = 0.5, *, targets: tuple = ()) -> Transform:
    if not (isinstance(p, (int, float)) and 0 <= p <= 1):
        raise ValueError(f"vflip: p must lie in [0, 1], got {p!r}.")
    p = float(p)

    def fn(key, batch):
        flip = jax.random.bernoulli(key, p, (batch["image"].shape[0], 1, 1, 1))
        mirror = lambda x: jnp.where(flip, x[:, ::-1], x)  # noqa: E731
        return _move(batch, mirror, mirror, targets)

    return fn


def random_resized_crop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), *,
                        targets: tuple = ()) -> Transform:
    """A window of a random fraction `scale` of the area and aspect ratio (w/h, log-uniform)
    in `ratio`, at a random place, resized (bilinear) to size x size. Where the drawn window
    is larger than the image along a side it is clipped to that side (torchvision instead
    redraws up to 10 times, then falls back to a center crop)."""
    out_h, out_w = _size_pair(size, "random_resized_crop")
    scale, ratio = _range(scale, "random_resized_crop: scale"), _range(ratio, "random_resized_crop: ratio")
    if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
        raise ValueError(f"random_resized_crop: need 0 < scale[0] <= scale[1] <= 1 and "
                         f"0 < ratio[0] <= ratio[1], got scale={scale}, ratio={ratio}.")

    def fn(key, batch):
        image = batch["image"]
        n, h, w, c = image.shape
        k_area, k_ratio, k_top, k_left = (jax.random.fold_in(key, i) for i in range(4))
        area = h * w * jax.random.uniform(k_area, (n,), minval=scale[0], maxval=scale[1])
        log_r = jax.random.uniform(k_ratio, (n,), minval=math.log(ratio[0]),
                                   maxval=math.log(ratio[1]))
        crop_w = jnp.clip(jnp.sqrt(area * jnp.exp(log_r)), 1.0, w)
        crop_h = jnp.clip(jnp.sqrt(area / jnp.exp(log_r)), 1.0, h)
        top = jax.random.uniform(k_top, (n,)) * (h - crop_h)
        left = jax.random.uniform(k_left, (n,)) * (w - crop_w)

        def one(x, top, left, crop_h, crop_w):
            s = jnp.stack([out_h / crop_h, out_w / crop_w])
            return jax.image.scale_and_translate(x, (out_h, out_w, c), (0, 1), s,
                                                 -jnp.stack([top, left]) * s, "linear")

        def one_mask(m, top, left, crop_h, crop_w):
            # The input pixel under each output pixel's centre, on the same grid as `one`.
            rows = jnp.floor((jnp.arange(out_h) + 0.5) * crop_h / out_h + top).astype(jnp.int32)
            cols = jnp.floor((jnp.arange(out_w) + 0.5) * crop_w / out_w + left).astype(jnp.int32)
            return m[jnp.clip(rows, 0, h - 1)][:, jnp.clip(cols, 0, w - 1)]

        params = (top, left, crop_h, crop_w)
        return _move(batch, lambda x: jax.vmap(one)(x, *params),
                     lambda m: jax.vmap(one_mask)(m, *params), targets)

    return fn


def warp(x: jax.Array, rows: jax.Array, cols: jax.Array, order: int) -> jax.Array:
    """(N, H, W, C) sampled at per-example coordinates `rows`, `cols` (N, H, W): bilinear
    (`order=1`) or nearest (`order=0`), reflected at the borders (scipy.ndimage's 'reflect')."""
    sample = lambda channel, r, c: jax.scipy.ndimage.map_coordinates(  # noqa: E731
        channel, [r, c], order=order, mode="reflect")
    per_channel = jax.vmap(sample, in_axes=(2, None, None), out_axes=2)
    return jax.vmap(per_channel)(x, rows, cols)


def elastic(grid: int = 3, sigma: float = 10.0, *, targets: tuple = ()) -> Transform:
    """U-Net's elastic deformation (Ronneberger et al. 2015, Sec. 3.1): random displacement
    vectors on a coarse grid x grid grid, each component drawn from N(0, sigma^2) pixels,
    interpolated bicubically to every pixel; the image is resampled bilinearly, masks by
    nearest neighbour, both reflected at the borders (so no pixel is filled)."""
    if not _is_int(grid) or grid < 2:
        raise ValueError(f"elastic: grid must be an int >= 2, got {grid!r}.")
    if not (isinstance(sigma, (int, float)) and sigma >= 0):
        raise ValueError(f"elastic: sigma must be a number >= 0 (pixels), got {sigma!r}.")

    def fn(key, batch):
        n, h, w, _ = batch["image"].shape
        coarse = sigma * jax.random.normal(key, (n, grid, grid, 2))
        shift = jax.image.resize(coarse, (n, h, w, 2), "cubic")
        rows = jnp.arange(h, dtype=jnp.float32)[:, None] + shift[..., 0]
        cols = jnp.arange(w, dtype=jnp.float32)[None, :] + shift[..., 1]
        return _move(batch, lambda x: warp(x, rows, cols, 1),
                     lambda m: warp(m, rows, cols, 0), targets)

    return fn


def normalize(mean=None, std=None, *, dataset_mean=(), dataset_std=()) -> Transform:
    mean = tuple(dataset_mean) if mean is None else _floats(mean, "normalize: mean")
    if std is None:  # a channel constant over the dataset has std 0: leave its scale alone
        std = tuple(s if s > 0 else 1.0 for s in dataset_std)
    else:
        std = _floats(std, "normalize: std")
    if not mean or not std:
        raise ValueError("normalize: the dataset has no mean/std; give them, e.g. "
                         "normalize(mean=(0.5,), std=(0.25,)).")
    if len(mean) != len(std) or min(std) <= 0:
        raise ValueError(f"normalize: need as many means as stds, all stds > 0; got "
                         f"mean={mean}, std={std}.")

    def fn(key, batch):
        image = batch["image"]
        if len(mean) not in (1, image.shape[-1]):
            raise ValueError(f"normalize: {len(mean)} means for {image.shape[-1]}-channel images.")
        return _with_image(batch, (image - jnp.array(mean)) / jnp.array(std))

    return fn


def _soft_labels(labels: jax.Array, num_classes: int) -> jax.Array:
    if labels.ndim == 2:
        return labels
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def _check_alpha(name: str, alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"{name}: alpha must be > 0, got {alpha!r}.")


def mixup(alpha: float = 0.2, *, num_classes: int) -> Transform:
    """Zhang et al. 2018, one mixing weight per batch (as timm does), partners by a random
    permutation of the batch."""
    _check_alpha("mixup", alpha)

    def fn(key, batch):
        k_lam, k_perm = jax.random.split(key)
        lam = jax.random.beta(k_lam, alpha, alpha)
        perm = jax.random.permutation(k_perm, batch["image"].shape[0])
        labels = _soft_labels(batch["label"], num_classes)
        return {**batch, "image": lam * batch["image"] + (1 - lam) * batch["image"][perm],
                "label": lam * labels + (1 - lam) * labels[perm]}

    return fn


def cutmix(alpha: float = 1.0, *, num_classes: int) -> Transform:
    """Yun et al. 2019: a box of area (1 - l) of the image, l ~ Beta(alpha, alpha), centred at
    a uniform point and clipped to the image, is filled from the partner; the label weight is
    the area actually kept."""
    _check_alpha("cutmix", alpha)

    def fn(key, batch):
        image = batch["image"]
        n, h, w, _ = image.shape
        k_lam, k_perm, k_y, k_x = jax.random.split(key, 4)
        lam = jax.random.beta(k_lam, alpha, alpha)
        perm = jax.random.permutation(k_perm, n)
        cut = jnp.sqrt(1 - lam)
        cy, cx = jax.random.uniform(k_y) * h, jax.random.uniform(k_x) * w
        y0, y1 = jnp.clip(cy - cut * h / 2, 0, h).round(), jnp.clip(cy + cut * h / 2, 0, h).round()
        x0, x1 = jnp.clip(cx - cut * w / 2, 0, w).round(), jnp.clip(cx + cut * w / 2, 0, w).round()
        rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
        box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
        kept = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        labels = _soft_labels(batch["label"], num_classes)
        return {**batch, "image": jnp.where(box[None, :, :, None], image[perm], image),
                "label": kept * labels + (1 - kept) * labels[perm]}

    return fn


TRANSFORMS: dict[str, Callable[..., Transform]] = {
    "pad": pad, "resize": resize, "center_crop": center_crop, "random_crop": random_crop,
    "hflip": hflip, "vflip": vflip, "random_resized_crop": random_resized_crop, "elastic": elastic,
    "normalize": normalize, "mixup": mixup, "cutmix": cutmix, "trivial_augment": trivial_augment,
    "rand_augment": rand_augment,
}
RANDOM = {"random_crop", "hflip", "vflip", "random_resized_crop", "elastic", "mixup", "cutmix",
          "trivial_augment", "rand_augment"}


def parse_spec(spec: str) -> list[tuple[str, tuple, dict]]:
    """"a(1, x=2)|b" -> [('a', (1,), {'x': 2}), ('b', (), {})]; arguments are Python literals."""
    parsed = []
    for part in (p.strip() for p in spec.split("|")):
        if not part:
            continue
        try:
            node = ast.parse(part, mode="eval").body
            if isinstance(node, ast.Name):
                parsed.append((node.id, (), {}))
                continue
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                raise ValueError
            args = tuple(ast.literal_eval(a) for a in node.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except (SyntaxError, ValueError):
            raise ValueError(f"Cannot read transform {part!r} in {spec!r}: write name or "
                             f"name(arg, key=value) with literal values, separated by '|'.") from None
        parsed.append((node.func.id, args, kwargs))
    return parsed


def make_transform(name: str, args: tuple = (), kwargs: dict | None = None, *,
                   num_classes: int = 0, mean=(), std=(), targets: tuple = (),
                   fill: int = 255) -> Transform:
    if name not in TRANSFORMS:
        raise ValueError(f"Unknown transform {name!r}. Valid choices: {', '.join(TRANSFORMS)}.")
    factory, kwargs = TRANSFORMS[name], dict(kwargs or {})
    context = {"num_classes": num_classes, "dataset_mean": mean, "dataset_std": std,
               "targets": tuple(targets), "fill": fill}
    params = inspect.signature(factory).parameters
    public = [p for p, v in params.items() if v.kind != inspect.Parameter.KEYWORD_ONLY]
    hidden = [k for k in kwargs if k in context]
    if hidden:
        raise ValueError(f"Transform {name}: {hidden} come from the dataset, not the spec. "
                         f"Its options: {', '.join(public) or 'none'}.")
    kwargs.update({k: v for k, v in context.items() if k in params})
    try:
        inspect.signature(factory).bind(*args, **kwargs)  # raises on unknown/missing options
    except TypeError as e:
        raise ValueError(f"Transform {name}: {e}. Its options: {', '.join(public) or 'none'}.") from None
    return factory(*args, **kwargs)


def make_preprocess(spec: str, *, num_classes: int, mean=(), std=(), train: bool = True,
                    targets: tuple = (), fill: int = 255, refused: dict | None = None
                    ) -> Callable[[jax.Array, Batch], Batch]:
    """The spec's transforms as one pure `preprocess(key, batch) -> batch` (see module doc).
    With `train=False` (evaluation) random transforms are refused; so are those in
    `refused` ({name: why}, the task's)."""
    steps = parse_spec(spec or "")
    for name, _, _ in steps:
        if name in (refused or {}):
            allowed = ", ".join(t for t in TRANSFORMS if t not in refused)
            raise ValueError(f"Transform {name!r} in {spec!r} cannot be used here: "
                             f"{refused[name]}. Valid choices: {allowed}.")
    if not train:
        random = [name for name, _, _ in steps if name in RANDOM]
        if random:
            raise ValueError(f"Evaluation transforms must be deterministic, but {random} "
                             f"draw at random. Deterministic ones: "
                             f"{', '.join(t for t in TRANSFORMS if t not in RANDOM)}.")
    transforms = [make_transform(name, args, kwargs, num_classes=num_classes, mean=mean, std=std,
                                 targets=targets, fill=fill)
                  for name, args, kwargs in steps]

    def preprocess(key: jax.Array, batch: Batch) -> Batch:
        image = batch["image"]
        image = image / 255.0 if image.dtype == jnp.uint8 else image
        batch = {**batch, "image": image.astype(jnp.float32)}
        for i, transform in enumerate(transforms):
            batch = transform(jax.random.fold_in(key, i), batch)
        return batch

    return preprocess
