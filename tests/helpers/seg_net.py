"""A tiny per-pixel classifier for segmentation tests: conv-BatchNorm-ReLU, conv, 1x1 conv to
the classes, at the input's resolution (a stand-in for U-Net where speed matters)."""

from typing import Any

import jax.numpy as jnp
from flax import linen as nn


class TinySegNet(nn.Module):
    num_classes: int
    width: int = 8
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), use_bias=False)(x)  # BatchNorm follows
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.norm_axis_name)(x)
        x = nn.relu(nn.Conv(self.width, (3, 3))(nn.relu(x)))
        return nn.Conv(self.num_classes, (1, 1))(x)
