"""Checking that a map explains something: does it point at the region that decides the class,
and does it depend on what the model learned (Adebayo et al., 2018)? NumPy, per image.

    top_fraction_in_region(maps, mask)      # share of each map's top-decile pixels in the mask
    rank_correlation(maps_a, maps_b)        # Spearman's rho between two maps of each image
"""

from __future__ import annotations

import numpy as np


def rankdata(x) -> np.ndarray:
    """Ranks 1..n of a 1-D array; tied values share the mean of their ranks."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(starts) - 1                       # tie group of each sorted value
    first = np.flatnonzero(starts)                      # where each group starts
    size = np.diff(np.r_[first, len(x)])
    mean_rank = first + (size + 1) / 2.0                # 1-based mean rank of each group
    ranks = np.empty(len(x))
    ranks[order] = mean_rank[group]
    return ranks


def rank_correlation(maps_a, maps_b) -> np.ndarray:
    """Spearman's rank correlation between maps_a[i] and maps_b[i] over their pixels, for each
    image: (N,) in [-1, 1] (0 where a map is constant)."""
    a = np.asarray(maps_a, np.float64).reshape(len(maps_a), -1)
    b = np.asarray(maps_b, np.float64).reshape(len(maps_b), -1)
    if a.shape != b.shape:
        raise ValueError(f"rank_correlation: the maps differ in shape, {np.shape(maps_a)} vs "
                         f"{np.shape(maps_b)}.")
    out = np.zeros(len(a))
    for i, (x, y) in enumerate(zip(a, b)):
        rx, ry = rankdata(x) - (len(x) + 1) / 2, rankdata(y) - (len(y) + 1) / 2
        denom = np.sqrt(np.sum(rx**2) * np.sum(ry**2))
        out[i] = np.sum(rx * ry) / denom if denom > 0 else 0.0
    return out


def top_fraction_in_region(maps, mask, quantile: float = 0.9) -> np.ndarray:
    """For each (H, W) map: the fraction of its top pixels (those at or above its `quantile`;
    0.9: the top decile) that lie inside `mask` ((H, W) or (N, H, W) booleans). Pixels tied at
    the cut count in proportion. A map blind to the region scores about the region's share
    of the image. (N,)."""
    maps = np.asarray(maps, np.float64)
    mask = np.broadcast_to(np.asarray(mask, bool), maps.shape)
    flat, inside = maps.reshape(len(maps), -1), mask.reshape(len(maps), -1)
    k = max(1, int(round((1 - quantile) * flat.shape[1])))
    out = np.zeros(len(flat))
    for i, (values, ins) in enumerate(zip(flat, inside)):
        threshold = np.sort(values)[-k]                 # the k-th largest value
        above, tied = values > threshold, values == threshold
        # Pixels tied at the threshold share the slots left, in proportion (no order bias).
        slots = k - above.sum()
        out[i] = (np.sum(above & ins) + slots * np.sum(tied & ins) / np.sum(tied)) / k
    return out
