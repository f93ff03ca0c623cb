"""U-Net (Ronneberger, Fischer & Brox, 2015): a contracting path of 3x3 convolutions and 2x2
max pools, an expanding path that up-samples, concatenates the contracting path's map of the
same size and convolves, and a 1x1 convolution to the classes.

    model = get_model("unet", num_classes=2, width=16)     # logits (N, H, W, 2)

The classic layout (`width=64, depth=4`): 64, 128, 256, 512, 1024 channels, each level two
3x3 convolutions with ReLU; 31,030,658 parameters for one input channel and two classes.
`width` scales every level (16: 1/16 of the parameters) for CPU-sized runs.

Differences from the paper, on purpose:
- 'same' padding: the paper's convolutions are unpadded ('valid'), so a 572x572 input gives
  a 388x388 map and the skip connections are cropped; here every 3x3 convolution pads by 1,
  nothing is cropped and the logits have the input's size (H and W must be multiples of
  2**depth). The parameter count is the same either way.
- `upsample='transpose'` (default) is the paper's "up-convolution": a 2x2 stride-2 transposed
  convolution that halves the channels, computed as a matmul per output pixel phase
  (`layers.ConvTranspose`, fast on CPU). `upsample='resize'`: bilinear resize by 2 and a 2x2
  convolution that halves the channels (the paper's wording, "an upsampling of the feature
  map followed by a 2x2 convolution"); no checkerboard pattern; same parameter count.
- `norm='batch'` adds BatchNorm after every 3x3 convolution (their bias then dropped), which
  the paper does not have; `dropout_rate` drops out the deepest map (the paper's "drop-out
  layers at the end of the contracting path").
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import ConvBlock, ConvTranspose, check_nhwc, max_pool, resize_bilinear

UPSAMPLE = ("transpose", "resize")


class UNet(nn.Module):
    num_classes: int = 2
    width: int = 64
    depth: int = 4  # number of 2x2 poolings (and up-samplings)
    upsample: str = "transpose"
    norm: str = "none"
    act: str = "relu"
    dropout_rate: float = 0.0
    fast_upsample: bool = True  # False: XLA's transposed convolution (benchmarks/conv_transpose.py)
    norm_axis_name: str | None = None  # set by the pmap train step: BatchNorm over all devices
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "UNet")
        if self.upsample not in UPSAMPLE:
            raise ValueError(f"Unknown U-Net upsample {self.upsample!r}. "
                             f"Valid choices: {', '.join(sorted(UPSAMPLE))}.")
        multiple = 2**self.depth
        if x.shape[1] % multiple or x.shape[2] % multiple:
            raise ValueError(f"U-Net with depth {self.depth} needs H and W divisible by "
                             f"{multiple}; got an input of {x.shape[1]}x{x.shape[2]}. Crop, pad "
                             "or resize the images to a multiple.")
        common = dict(norm=self.norm, act=self.act, norm_axis_name=self.norm_axis_name,
                      dtype=self.dtype)

        def double_conv(x, features, name):
            x = ConvBlock(features, 3, padding=1, name=f"{name}_conv1", **common)(x, train)
            return ConvBlock(features, 3, padding=1, name=f"{name}_conv2", **common)(x, train)

        skips = []
        for level in range(self.depth):
            x = double_conv(x, self.width * 2**level, f"down{level + 1}")
            skips.append(x)
            x = max_pool(x, 2)
        x = double_conv(x, self.width * 2**self.depth, "bottom")
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        for level in reversed(range(self.depth)):
            features = self.width * 2**level
            name = f"up{level + 1}"
            if self.upsample == "transpose":
                x = ConvTranspose(features, 2, 2, fast=self.fast_upsample, dtype=self.dtype,
                                  name=name)(x)
            else:
                x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))
                x = ConvBlock(features, 2, padding="SAME", act="none", dtype=self.dtype,
                              name=name)(x, train)
            x = jnp.concatenate([skips[level], x], axis=-1)  # the paper's order: skip first
            x = double_conv(x, features, name)
        x = ConvBlock(self.num_classes, 1, padding=0, act="none", dtype=self.dtype,
                      name="head")(x, train)
        return x.astype(jnp.float32)
