"""LeNet-5 (LeCun et al., 1998) on 32x32 single-channel images.

C1 6@5x5 -> S2 -> C3 16@5x5 -> S4 -> C5 120@5x5 -> F6 84 -> 10 outputs: 61,706 parameters.
Defaults are the modern reading (ReLU, max pooling); `act='tanh', pool='avg'` is closer to
the paper. MNIST's 28x28 digits are zero-padded to 32x32, as in the paper.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import ConvBlock, DenseBlock, check_nhwc, get_pool


class LeNet5(nn.Module):
    num_classes: int = 10
    act: str = "relu"
    pool: str = "max"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "LeNet-5")
        if x.shape[1:3] != (32, 32):
            raise ValueError(f"LeNet-5 takes 32x32 images, got {x.shape[1]}x{x.shape[2]}; "
                             "pad or resize them to 32x32 (MNIST is padded by 2 on each side).")
        pool = get_pool(self.pool)
        conv = dict(padding="VALID", act=self.act, dtype=self.dtype)
        x = ConvBlock(6, 5, name="C1", **conv)(x, train)
        x = pool(x, 2)
        x = ConvBlock(16, 5, name="C3", **conv)(x, train)
        x = pool(x, 2)
        x = ConvBlock(120, 5, name="C5", **conv)(x, train)
        x = x.reshape(x.shape[0], -1)
        x = DenseBlock(84, act=self.act, dtype=self.dtype, name="F6")(x, train)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
