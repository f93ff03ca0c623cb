"""AlexNet in torchvision's single-tower form (Krizhevsky, 2014 "one weird trick").

224x224x3 input, 61,100,840 parameters with 1000 classes.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import ConvBlock, DenseBlock, adaptive_avg_pool, check_nhwc, max_pool


class AlexNet(nn.Module):
    num_classes: int = 1000
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "AlexNet")
        layers = [(64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)]
        for i, (features, kernel, stride, pad) in enumerate(layers):
            x = ConvBlock(features, kernel, stride, padding=pad, dtype=self.dtype,
                          name=f"conv{i + 1}")(x, train)
            if i in (0, 1, 4):
                x = max_pool(x, 3, 2)
        x = adaptive_avg_pool(x, 6)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = DenseBlock(4096, dropout_rate=self.dropout_rate, dtype=self.dtype, name="fc1")(x, train)
        x = DenseBlock(4096, dtype=self.dtype, name="fc2")(x, train)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
