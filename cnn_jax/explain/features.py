"""What a network computes inside: a layer's feature maps, the first layer's filters, and
per-layer activation statistics (mean, dead ReLUs). Pure and jit-compiled.

    maps = activations(model, variables, images, "C1")            # (N, 28, 28, 6)
    name, kernel = first_conv_kernel(model, variables, images)     # "C1/conv", (5, 5, 1, 6)
    stats = activation_stats(model, variables, images)             # {layer: {"mean": ...}}
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.explain.capture import check_images, forward, list_layers


@functools.partial(jax.jit, static_argnames=("model", "layer"))
def activations(model: nn.Module, variables: Any, images: jax.Array, layer: str) -> jax.Array:
    """The output of `layer` for every image: (N, H, W, C) for a convolutional layer."""
    check_images(images, "activations")
    _, acts = forward(model, variables, jnp.asarray(images, jnp.float32), (layer,))
    return acts[layer]


def activation_layers(model: nn.Module, variables: Any, images: jax.Array) -> tuple[str, ...]:
    """The layers whose output is an activation's (a module with an `act` other than 'none':
    ConvBlock, DenseBlock, residual blocks), in the order they compute."""
    return tuple(lay.name for lay in list_layers(model, variables, images)
                 if lay.act not in (None, "none"))


def activation_stats(model: nn.Module, variables: Any, images: jax.Array,
                     layers: Sequence[str] | None = None) -> dict[str, dict[str, jax.Array]]:
    """Per layer, over the batch: `mean` and `std` of the outputs, `zero_fraction` (outputs
    exactly 0) and `dead_fraction`: the fraction of channels (last axis) that are 0 for every
    image and position (a dead ReLU never fires). Default layers: `activation_layers`."""
    check_images(images, "activation_stats")
    return _activation_stats(model, variables, images, None if layers is None else tuple(layers))


@functools.partial(jax.jit, static_argnames=("model", "layers"))
def _activation_stats(model, variables, images, layers):
    images = jnp.asarray(images, jnp.float32)
    if layers is None:
        layers = activation_layers(model, variables, images)
    _, acts = forward(model, variables, images, tuple(layers))
    stats = {}
    for name in layers:
        a = acts[name].astype(jnp.float32)
        fires = jnp.any(a != 0, axis=tuple(range(a.ndim - 1)))
        stats[name] = {"mean": jnp.mean(a), "std": jnp.std(a),
                       "zero_fraction": jnp.mean(a == 0), "dead_fraction": jnp.mean(~fires)}
    return stats


def first_conv_kernel(model: nn.Module, variables: Any, images: jax.Array
                      ) -> tuple[str, jax.Array]:
    """The first convolution the images go through: its name and kernel
    (kernel_h, kernel_w, in_channels, out_channels)."""
    convs = [lay.name for lay in list_layers(model, variables, images) if lay.kind == "Conv"]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution (nn.Conv).")
    params = variables["params"]
    for part in convs[0].split("/"):
        params = params[part]
    return convs[0], params["kernel"]
