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


# --- Pictures that explain themselves: titles, colour bars, channel numbers (matplotlib) ----

DEAD_COLOR = (0.85, 0.1, 0.1)


def _figure(width: float, height: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.figure(figsize=(width, height), dpi=100)


def figure_to_array(fig) -> np.ndarray:
    """A matplotlib figure as (H, W, 3) uint8; closes it."""
    import matplotlib.pyplot as plt
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def explanation_figure(image, heatmap, title: str, map_label: str = "attribution",
                       cmap: str = "jet", clip: float = 0.99) -> np.ndarray:
    """input | heat map with its colour bar | overlay, under `title` (say the true label,
    the prediction and its probability, and the class explained). (H, W, 3) uint8."""
    heatmap = np.asarray(heatmap, np.float32)
    lo, hi = float(heatmap.min()), float(np.quantile(heatmap, clip))
    fig = _figure(9.6, 3.6)
    axes = fig.subplots(1, 3)
    axes[0].imshow(to_rgb(image), interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    shown = axes[1].imshow(heatmap, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1,
                           interpolation="nearest")
    axes[1].set_title(map_label, fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
    axes[2].imshow(overlay(image, heatmap, cmap=cmap, clip=clip), interpolation="nearest")
    axes[2].set_title("overlay", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return figure_to_array(fig)


def _grid_axes(fig, tiles: np.ndarray, ncols: int, pad: int, **imshow):
    """One image of all tiles (K, h, w[, 3]) on one axes; returns (axes, image, tile origin)."""
    grid = tile(tiles, ncols, pad=pad, pad_value=np.nan)
    ax = fig.add_axes((0.03, 0.03, 0.8, 0.85))
    grid = np.nan_to_num(grid, nan=1.0) if grid.ndim == 3 else np.ma.masked_invalid(grid)
    shown = ax.imshow(grid, interpolation="nearest", **imshow)
    ax.set_axis_off()
    h, w = tiles.shape[1:3]
    return ax, shown, lambda i: (pad + (i % ncols) * (w + pad), pad + (i // ncols) * (h + pad))


def activation_figure(maps, title: str, dead=None) -> np.ndarray:
    """One image's feature maps (H, W, C) as a grid on one scale (0 is black) with a colour
    bar, each tile numbered by its channel; channels `dead` (a boolean (C,) mask, e.g. 0 for
    every image explained) framed in red and marked 'dead'. (H, W, 3) uint8."""
    import matplotlib.patches as patches
    from matplotlib import colormaps
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3:
        raise ValueError(f"activation_figure takes one image's maps (H, W, C), got shape "
                         f"{maps.shape}; pick one image: maps[i].")
    channels = maps.shape[-1]
    dead = np.zeros(channels, bool) if dead is None else np.asarray(dead, bool)
    ncols = math.ceil(math.sqrt(channels))
    nrows = math.ceil(channels / ncols)
    top = max(float(maps.max()), 1e-12)
    fig = _figure(8.0, max(3.0, 8.0 * nrows / ncols * 0.8 + 0.8))
    cmap = colormaps["gray"].copy()
    cmap.set_bad("white")
    h, w = maps.shape[:2]
    pad = max(1, round(0.12 * max(h, w)))
    ax, shown, origin = _grid_axes(fig, np.clip(np.moveaxis(maps, -1, 0), 0, None), ncols, pad,
                                   cmap=cmap, vmin=0, vmax=top)
    size = max(4.0, min(9.0, 90.0 / ncols))
    for c in range(channels):
        x, y = origin(c)
        ax.text(x + 0.5, y + 0.5, str(c), color="yellow", fontsize=size, va="top", ha="left",
                fontweight="bold")
        if dead[c]:
            ax.add_patch(patches.Rectangle((x - 0.5, y - 0.5), w, h, fill=False,
                                           edgecolor=DEAD_COLOR, linewidth=2))
            ax.text(x + w / 2, y + h / 2, "dead", color=DEAD_COLOR, fontsize=size,
                    ha="center", va="center", fontweight="bold")
    fig.colorbar(shown, cax=fig.add_axes((0.86, 0.1, 0.03, 0.7))).ax.tick_params(labelsize=7)
    fig.suptitle(title + (f"\n{int(dead.sum())} of {channels} channels dead (red)"
                          if dead.any() else f"\nno dead channel of {channels}"), fontsize=9)
    return figure_to_array(fig)


def filter_figure(kernel, title: str) -> np.ndarray:
    """Convolution kernels (kh, kw, in, out), each filter numbered, large enough to see its
    weights, on one symmetric scale with a colour bar (0 is mid-grey). Three input channels
    give colour tiles (the filter's RGB weights); otherwise a row per input channel.
    (H, W, 3) uint8."""
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 4:
        raise ValueError(f"filter_figure takes a kernel (kh, kw, in, out), got shape "
                         f"{kernel.shape}.")
    kh, kw, cin, cout = kernel.shape
    lim = float(np.abs(kernel).max()) or 1.0
    rgb = cin == 3
    if rgb:
        tiles, ncols = np.moveaxis(0.5 + 0.5 * kernel / lim, -1, 0), math.ceil(math.sqrt(cout))
    else:
        tiles, ncols = np.transpose(kernel, (2, 3, 0, 1)).reshape(-1, kh, kw), cout
    nrows = math.ceil(len(tiles) / ncols)
    inch = min(1.0, 12.0 / ncols)  # about 1 inch (100 px) a filter, up to 12 inches wide
    fig = _figure(max(5.0, ncols * inch / 0.8 + 1.2), max(2.5, nrows * inch / 0.85 + 0.9))
    pad = max(1, round(0.25 * max(kh, kw)))
    ax, shown, origin = _grid_axes(fig, tiles, ncols, pad, **({} if rgb else dict(
        cmap="gray", vmin=-lim, vmax=lim)))
    for i in range(len(tiles)):
        x, y = origin(i)
        label = str(i) if rgb else (str(i % cout) if i < cout else "")
        ax.text(x + kw / 2 - 0.5, y - 0.6, label, fontsize=7, ha="center", va="bottom")
    if not rgb and cin > 1:
        for c in range(cin):
            ax.text(-0.8, origin(c * cout)[1] + kh / 2, f"in {c}", fontsize=7, ha="right",
                    va="center")
    if rgb:
        fig.text(0.86, 0.5, f"RGB weights,\nmid-grey 0,\nscale ±{lim:.3g}", fontsize=8,
                 va="center")
    else:
        fig.colorbar(shown, cax=fig.add_axes((0.86, 0.1, 0.03, 0.7))).ax.tick_params(
            labelsize=7)
    fig.suptitle(f"{title}: {cout} filters {kh}x{kw}x{cin}", fontsize=9)
    return figure_to_array(fig)
