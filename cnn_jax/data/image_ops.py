"""Host-side image operations on single uint8 (H, W, C) arrays, before batching."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale (bilinear) so the image covers `size` = (height, width), then cut the centre:
    torchvision's Resize + CenterCrop for a square `size`."""
    height, width = size
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    squeeze = image.ndim == 3 and image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    resized = np.asarray(pil.resize((new_w, new_h), Image.BILINEAR))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    out = resized[top:top + height, left:left + width]
    return out[..., None] if squeeze else out
