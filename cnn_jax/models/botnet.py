"""BoTNet-50 (Srinivas et al., 2021): ResNet-50 whose last stage (c5) replaces each 3x3
convolution by multi-head self-attention over the whole feature map with 2-D relative position
encodings. The paper gives 20.8M parameters (its Table 1; ResNet-50 25.5M); `botnet50` has
20,852,008 (the relative position embeddings, 13,568 of them, are what is above 20.84M), as
`tests/test_hybrid_models.py` checks.

The attention's relative position logits are split in height and width (the paper's Rh, Rw):
the logit of query (i, j) for key (k, l) is q . k + q . r_h[k - i] + q . r_w[l - j]. They are
learned for one feature-map size, so a BoTNet takes one input size (224x224 for `botnet50`,
32x32 for the small CPU-sized `botnet_cifar`). In the first c5 block the stride 2 is a 2x2
average pool after the attention, as in the paper.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.layers import ConvBlock, avg_pool, check_nhwc, get_activation, global_avg_pool, max_pool
from cnn_jax.models.resnet import BasicBlock, BottleneckBlock


def relative_logits(q: jax.Array, rel_h: jax.Array, rel_w: jax.Array) -> jax.Array:
    """(N, heads, H*W, H*W) position logits q . r_h[k - i] + q . r_w[l - j] for queries
    q (N, heads, H, W, d) and embeddings r_h (2H - 1, d), r_w (2W - 1, d)."""
    n, heads, h, w, _ = q.shape
    idx_h = jnp.arange(h)[None, :] - jnp.arange(h)[:, None] + h - 1   # [i, k] = k - i + H - 1
    idx_w = jnp.arange(w)[None, :] - jnp.arange(w)[:, None] + w - 1
    logits_h = jnp.einsum("bnhwd,hkd->bnhwk", q, rel_h[idx_h])        # (N, heads, H, W, H)
    logits_w = jnp.einsum("bnhwd,wld->bnhwl", q, rel_w[idx_w])        # (N, heads, H, W, W)
    logits = logits_h[..., :, None] + logits_w[..., None, :]          # (N, heads, H, W, H, W)
    return logits.reshape(n, heads, h * w, h * w)


class RelativeSelfAttention2D(nn.Module):
    """All-to-all multi-head self-attention over an (N, H, W, C) map with 1x1 query, key and
    value projections (no bias, no output projection, as BoTNet's MHSA) and split 2-D relative
    position logits."""
    heads: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_nhwc(x, "RelativeSelfAttention2D")
        n, h, w, c = x.shape
        if c % self.heads:
            raise ValueError(f"RelativeSelfAttention2D: {c} channels do not split into "
                             f"{self.heads} heads.")
        d = c // self.heads
        qkv = nn.Dense(3 * c, use_bias=False, dtype=self.dtype, name="qkv")(x)
        q, k, v = jnp.split(qkv.reshape(n, h, w, 3, self.heads, d), 3, axis=3)
        q, k, v = (t[:, :, :, 0].transpose(0, 3, 1, 2, 4) for t in (q, k, v))  # (N, heads, H, W, d)
        q = q * d ** -0.5
        init = nn.initializers.normal(d ** -0.5)
        rel_h = self.param("rel_h", init, (2 * h - 1, d)).astype(self.dtype)
        rel_w = self.param("rel_w", init, (2 * w - 1, d)).astype(self.dtype)
        content = jnp.einsum("bnqd,bnkd->bnqk", q.reshape(n, self.heads, h * w, d),
                             k.reshape(n, self.heads, h * w, d))
        logits = (content + relative_logits(q, rel_h, rel_w)).astype(jnp.float32)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bnqk,bnkd->bnqd", weights, v.reshape(n, self.heads, h * w, d))
        return out.transpose(0, 2, 1, 3).reshape(n, h, w, c)


class BoTBlock(nn.Module):
    """A ResNet bottleneck whose 3x3 convolution is `RelativeSelfAttention2D` (then BatchNorm
    and the activation); a stride of 2 is a 2x2 average pool after the attention."""
    features: int
    strides: int = 1
    heads: int = 4
    expansion: int = 4
    norm: str = "batch"
    act: str = "relu"
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        common = dict(norm=self.norm, norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        y = ConvBlock(self.features, 1, 1, padding=0, act=self.act, name="conv1", **common)(x, train)
        y = RelativeSelfAttention2D(self.heads, self.dtype, name="mhsa")(y)
        if self.strides > 1:
            y = avg_pool(y, self.strides)
        norm = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                            axis_name=self.norm_axis_name if train else None, dtype=self.dtype,
                            name="mhsa_norm")
        y = get_activation(self.act)(norm(y))
        y = ConvBlock(self.features * self.expansion, 1, 1, padding=0, act="none",
                      norm_scale_init=nn.initializers.zeros, name="conv3", **common)(y, train)
        shortcut = x
        if x.shape != y.shape:
            shortcut = ConvBlock(y.shape[-1], 1, self.strides, padding=0, act="none",
                                 name="downsample", **common)(x, train)
        return get_activation(self.act)(y + shortcut)


class BoTNet(nn.Module):
    """ResNet stages 1-3 as in `cnn_jax.models.resnet` (same names: layer1_0, ...), stage 4
    of `BoTBlock`s, global average pooling and a dense head."""
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    block_cls: Any = BottleneckBlock
    num_classes: int = 1000
    stem: str = "imagenet"
    width: int = 64
    heads: int = 4
    norm_axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_nhwc(x, "BoTNet")
        common = dict(norm="batch", norm_axis_name=self.norm_axis_name, dtype=self.dtype)
        if self.stem == "imagenet":
            x = ConvBlock(self.width, 7, 2, padding=3, name="stem", **common)(x, train)
            x = max_pool(x, 3, 2, padding=1)
        else:
            x = ConvBlock(self.width, 3, 1, padding=1, name="stem", **common)(x, train)
        *conv_stages, last = self.stage_sizes
        for i, num_blocks in enumerate(conv_stages):
            for j in range(num_blocks):
                x = self.block_cls(self.width * 2**i, 2 if i > 0 and j == 0 else 1,
                                   name=f"layer{i + 1}_{j}", **common)(x, train)
        i = len(conv_stages)
        for j in range(last):
            x = BoTBlock(self.width * 2**i, 2 if j == 0 else 1, self.heads,
                         expansion=self.block_cls.expansion, name=f"layer{i + 1}_{j}",
                         **common)(x, train)
        x = global_avg_pool(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


__all__ = ["BoTNet", "BoTBlock", "RelativeSelfAttention2D", "relative_logits", "BasicBlock"]
