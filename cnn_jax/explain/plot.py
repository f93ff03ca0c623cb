"""Pictures of explanations as uint8 arrays and PNG files (NumPy, matplotlib's colour maps and
Pillow; nothing here is traced).

    save_png("cam.png", overlay(image, cam))                     # heat map over the image
    save_png("c1.png", activation_grid(maps[0]))                 # one tile per channel
    save_png("filters.png", filter_grid(kernel))                 # one tile per filter

Small images are enlarged (nearest neighbour, whole pixels) so that a 32x32 input is legible.
"""

from __future__ import annotations

import math
import os

import numpy as np


def normalize(maps, axis=None, clip: float = 1.0) -> np.ndarray:
    """Scaled to [0, 1] over `axis` (default: the whole array), from the minimum to the
    `clip` quantile (1.0: the maximum; values above it become 1); a constant gives 0."""
    maps = np.asarray(maps, np.float32)
    lo = maps.min(axis=axis, keepdims=True)
    hi = maps.max(axis=axis, keepdims=True) if clip >= 1 else np.quantile(
        maps, clip, axis=axis, keepdims=True)
    span = hi - lo
    scaled = np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0.0)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def to_rgb(image) -> np.ndarray:
    """An (H, W, 1 or 3) image, whatever its scale (e.g. normalized), as (H, W, 3) uint8."""
    image = normalize(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.shape[-1] != 3:
        raise ValueError(f"Expected an (H, W, 1) or (H, W, 3) image, got shape {image.shape}.")
    return np.round(image * 255).astype(np.uint8)


def colorize(heatmap, cmap: str = "jet", clip: float = 0.99) -> np.ndarray:
    """An (H, W) map through a matplotlib colour map, scaled from its minimum to its `clip`
    quantile (so that a few extreme pixels of a gradient map do not wash out the rest):
    (H, W, 3) uint8."""
    from matplotlib import colormaps
    rgb = colormaps[cmap](normalize(heatmap, clip=clip))[..., :3]
    return np.round(rgb * 255).astype(np.uint8)


def overlay(image, heatmap, alpha: float = 0.6, cmap: str = "jet", clip: float = 0.99
            ) -> np.ndarray:
    """The heat map (H, W) over the image (H, W, C): each pixel blends towards the colour of
    the map in proportion to its (scaled, as `colorize`) value, so unimportant pixels show
    the image. (H, W, 3) uint8."""
    heatmap = np.asarray(heatmap)
    if heatmap.shape != np.asarray(image).shape[:2]:
        raise ValueError(f"The heat map {heatmap.shape} must match the image's height and width "
                         f"{np.asarray(image).shape[:2]}.")
    weight = alpha * normalize(heatmap, clip=clip)[..., None]
    blended = (1 - weight) * to_rgb(image) + weight * colorize(heatmap, cmap, clip)
    return np.round(blended).astype(np.uint8)


def enlarge(image, min_size: int = 128) -> np.ndarray:
    """Repeat pixels by the smallest whole factor that makes both sides >= `min_size`."""
    image = np.asarray(image)
    factor = max(1, math.ceil(min_size / min(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def tile(tiles, ncols: int | None = None, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """(K, h, w) or (K, h, w, 3) tiles in [0, 1] as one grid (a square one by default),
    separated by `pad` pixels of `pad_value`."""
    tiles = np.asarray(tiles, np.float32)
    k, h, w = tiles.shape[:3]
    ncols = ncols or math.ceil(math.sqrt(k))
    nrows = math.ceil(k / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, *tiles.shape[3:]),
                   pad_value, np.float32)
    for i in range(k):
        r, c = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = tiles[i]
    return grid


def activation_grid(maps, ncols: int | None = None, per_channel: bool = False,
                    min_tile: int = 32) -> np.ndarray:
    """One layer's feature maps (H, W, C) as a grey grid, channel c at position c (row-major).
    One scale for all (0 is black, so a channel that never fires is black), or one per
    channel (`per_channel`, to see the shape of weak maps). (rows, cols) uint8."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3:
        raise ValueError(f"activation_grid takes one image's maps (H, W, C), got shape "
                         f"{maps.shape}; pick one image: maps[i].")
    tiles = np.moveaxis(maps, -1, 0)
    if per_channel:
        tiles = normalize(tiles, axis=(1, 2))
    else:
        top = max(float(tiles.max()), 0.0)
        tiles = np.clip(tiles, 0, None) / top if top > 0 else np.zeros_like(tiles)
    tiles = np.stack([enlarge(t, min_tile) for t in tiles])
    return np.round(tile(tiles, ncols) * 255).astype(np.uint8)


def filter_grid(kernel, min_tile: int = 32) -> np.ndarray:
    """Convolution kernels (kh, kw, in, out) as a grid, one tile per filter, on one symmetric
    scale: 0 is mid-grey, positive brighter. Three input channels give colour tiles (the
    filter's RGB weights); otherwise one grey tile per (input, output) pair, a row per input
    channel. uint8."""
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 4:
        raise ValueError(f"filter_grid takes a kernel (kh, kw, in, out), got shape {kernel.shape}.")
    lim = float(np.abs(kernel).max()) or 1.0
    scaled = 0.5 + 0.5 * kernel / lim
    if kernel.shape[2] == 3:
        tiles, ncols = np.moveaxis(scaled, -1, 0), None                    # (out, kh, kw, 3)
    else:
        tiles = np.transpose(scaled, (2, 3, 0, 1)).reshape(-1, *kernel.shape[:2])
        ncols = kernel.shape[3]
    tiles = np.stack([enlarge(t, min_tile) for t in tiles])
    return np.round(tile(tiles, ncols, pad=2) * 255).astype(np.uint8)


def save_png(path: str, image) -> str:
    """Writes a uint8 (H, W) or (H, W, 3) image; creates the folder. Returns the path."""
    from PIL import Image
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"save_png takes uint8 pixels, got {image.dtype}; use to_rgb or "
                         "colorize first.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)
    return path
