"""VGG-11/13/16/19 (Simonyan & Zisserman, 2015), with or without BatchNorm, as in torchvision.

The ImageNet head pools to 7x7 and uses two 4096-wide dense layers (VGG-16: 138,357,544
parameters). The CIFAR variants (`pool_size=1, hidden_features=512`) keep the same
convolutions and put a small head on the 1x1 feature map of a 32x32 image.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import ConvBlock, DenseBlock, adaptive_avg_pool, check_nhwc, max_pool

# Output channels of each 3x3 convolution; "M" is a 2x2 max pool.
STAGES = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    layers: Sequence[Any]
    num_classes: int = 1000
    batch_norm: bool = False
    pool_size: int = 7
    hidden_features: int = 4096
    dropout_rate: float = 0.5
    norm_axis_name: str | None = None  # set by the pmap train step: BatchNorm over all devices
    dtype: Any = jnp.float32
    out_strides: Sequence[int] | None = None  # a backbone: {stride: feature map}, no classifier

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | dict[int, jax.Array]:
        check_nhwc(x, "VGG")
        norm = "batch" if self.batch_norm else "none"
        if self.out_strides is not None:
            valid = [2**i for i in range(1 + sum(v == "M" for v in self.layers))]
            if not self.out_strides or any(s not in valid for s in self.out_strides):
                raise ValueError(f"VGG out_strides {tuple(self.out_strides)!r}: valid strides "
                                 f"are {valid}.")
        conv_index, stride, features = 0, 1, {}
        for v in self.layers:
            if v == "M":
                x = max_pool(x, 2)
                stride *= 2
                features[stride] = x
            else:
                conv_index += 1
                # torchvision keeps the convolution bias even before BatchNorm.
                x = ConvBlock(v, 3, padding=1, norm=norm, use_bias=True, dtype=self.dtype,
                              norm_axis_name=self.norm_axis_name,
                              name=f"conv{conv_index}")(x, train)
                features[stride] = x
        if self.out_strides is not None:
            return {s: features[s] for s in self.out_strides}
        x = adaptive_avg_pool(x, self.pool_size)
        x = x.reshape(x.shape[0], -1)
        for i in (1, 2):
            x = DenseBlock(self.hidden_features, dropout_rate=self.dropout_rate,
                           dtype=self.dtype, name=f"fc{i}")(x, train)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
