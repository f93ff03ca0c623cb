"""Training augmentations as pure batch functions: `fn(key, images) -> images`, jit-able and
deterministic given the key (each example draws from its own fold of the key).

`make_augment(config.augment)` composes the ones a config switches on.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

Augment = Callable[[jax.Array, jax.Array], jax.Array]


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """Zero-pad each side by `padding`, then crop back to the original size at a random offset
    per example (a random translation by up to `padding` pixels)."""
    n, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def random_hflip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirror each example left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


def make_augment(cfg: Mapping[str, Any] | None) -> Augment | None:
    """The composed augmentation of `cfg` (keys `crop_padding`, `hflip`), or None if it is off."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - {"crop_padding", "hflip"})
    if unknown:
        raise ValueError(f"Unknown augmentation option(s) {unknown}. Valid: crop_padding, hflip.")
    padding, hflip = int(cfg.get("crop_padding", 0)), bool(cfg.get("hflip", False))
    if padding < 0:
        raise ValueError(f"augment.crop_padding must be >= 0, got {padding}.")
    if not padding and not hflip:
        return None

    def augment(key, images):
        crop_key, flip_key = jax.random.split(key)
        if padding:
            images = random_crop(crop_key, images, padding)
        if hflip:
            images = random_hflip(flip_key, images)
        return images

    return augment
