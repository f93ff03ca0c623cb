"""DenseNet-121 (Huang et al., 2017), laid out as torchvision's `densenet121`.

Dense blocks: each layer (BatchNorm-ReLU-1x1 conv to 4k channels, BatchNorm-ReLU-3x3 conv to k
channels, growth rate k = 32) reads the concatenation of every earlier output of its block;
transitions (BatchNorm-ReLU-1x1 conv halving the channels, 2x2 average pool) between blocks.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import avg_pool, check_nhwc, conv, make_norm, max_pool
from cnn_jax.models.blocks import select_features

HE_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # torchvision's kaiming_normal_


class DenseNet(nn.Module):
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    num_classes: int = 1000
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32
    out_strides: Sequence[int] | None = None  # a backbone: {stride: feature map}, no classifier

    def _norm_relu(self, x, name, train):
        norm = make_norm("batch", train=train, features=x.shape[-1], dtype=self.dtype,
                         param_dtype=jnp.float32, module_name=name, axis_name=self.norm_axis_name)
        return nn.relu(norm(x))

    def _conv(self, features, kernel, name, strides=1, padding=0):
        return conv(features, kernel, strides, padding, use_bias=False, kernel_init=HE_INIT,
                    dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "DenseNet")
        x = self._conv(self.num_init_features, 7, "features.conv0", 2, 3)(x)
        x = self._norm_relu(x, "features.norm0", train)
        features = {2: x}
        x = max_pool(x, 3, 2, padding=1)
        for i, num_layers in enumerate(self.block_config, start=1):
            block = f"features.denseblock{i}"
            for j in range(1, num_layers + 1):
                layer = f"{block}.denselayer{j}"
                y = self._norm_relu(x, f"{layer}.norm1", train)
                y = self._conv(self.bn_size * self.growth_rate, 1, f"{layer}.conv1")(y)
                y = self._norm_relu(y, f"{layer}.norm2", train)
                y = self._conv(self.growth_rate, 3, f"{layer}.conv2", padding=1)(y)
                x = jnp.concatenate([x, y], axis=-1)
            if i < len(self.block_config):
                features[2 ** (i + 1)] = x
                y = self._norm_relu(x, f"features.transition{i}.norm", train)
                x = avg_pool(self._conv(x.shape[-1] // 2, 1, f"features.transition{i}.conv")(y), 2)
        x = self._norm_relu(x, "features.norm5", train)
        features[2 ** (len(self.block_config) + 1)] = x
        if self.out_strides is not None:
            return select_features(features, self.out_strides, "DenseNet")
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
