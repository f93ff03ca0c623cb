"""Which pixels a prediction depends on: saliency, SmoothGrad, integrated gradients, Grad-CAM and
occlusion. Pure and jit-compiled; the model, layer names and step counts are static arguments.

Each explains, for every image of the batch, one class: `targets` (an int, or (N,) ints), by
default the class the model predicts. The score explained is that class's logit.

    maps = grad_cam(model, variables, images, "C3")                 # (N, H, W), >= 0
    maps = smoothgrad(model, variables, images, jax.random.key(0))  # (N, H, W), >= 0
    attributions = integrated_gradients(model, variables, images, steps=64)  # (N, H, W, C)

`METHODS` names the ones that give one (N, H, W) map per image (the command and the notebook
use it): `explain("gradcam", model, variables, images, layer="C3")`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from cnn_jax.explain.capture import (check_images, input_gradient, layer_gradient, list_layers,
                                     predict, resolve_targets, target_scores)


def _chunked_weighted_sum(fn: Callable, xs: jax.Array, weights: jax.Array, chunk: int):
    """sum_i weights[i] * fn(xs)[i], where `fn` maps a chunk of items (k, ...) to their
    values (k, ...) in one go; `chunk` items at a time (a scan over chunks), so memory holds
    one chunk, not every item."""
    n = xs.shape[0]
    chunk = max(1, min(chunk, n))
    pad = -n % chunk
    xs = jnp.concatenate([xs, jnp.repeat(xs[-1:], pad, axis=0)])
    weights = jnp.concatenate([weights, jnp.zeros((pad,), weights.dtype)])
    xs = xs.reshape(-1, chunk, *xs.shape[1:])
    weights = weights.reshape(-1, chunk)
    if xs.shape[0] == 1:   # one chunk: no loop
        return jnp.tensordot(weights[0], fn(xs[0]).astype(jnp.float32), axes=1)

    def body(total, item):
        x, w = item
        return total + jnp.tensordot(w, fn(x).astype(jnp.float32), axes=1), None

    shape = jax.eval_shape(fn, xs[0]).shape[1:]
    total, _ = jax.lax.scan(body, jnp.zeros(shape, jnp.float32), (xs, weights))
    return total


def _batched_input_gradient(model, variables, images: jax.Array, targets: jax.Array):
    """Input gradients of k variants of the batch (k, N, H, W, C) in one pass: the variants
    are folded into the batch axis (examples are independent in evaluation mode)."""
    k, n = images.shape[:2]
    grads = input_gradient(model, variables, images.reshape(k * n, *images.shape[2:]),
                           jnp.tile(targets, k))
    return grads.reshape(images.shape)


def _as_float(images: jax.Array, what: str) -> jax.Array:
    check_images(images, what)
    return jnp.asarray(images, jnp.float32)


@functools.partial(jax.jit, static_argnames=("model",))
def input_gradients(model: nn.Module, variables: Any, images: jax.Array,
                    targets: jax.Array | int | None = None) -> jax.Array:
    """d logit[target] / d image: (N, H, W, C), signed."""
    images = _as_float(images, "input_gradients")
    targets = resolve_targets(predict(model, variables, images), targets)
    return input_gradient(model, variables, images, targets)


@functools.partial(jax.jit, static_argnames=("model",))
def saliency(model: nn.Module, variables: Any, images: jax.Array,
             targets: jax.Array | int | None = None) -> jax.Array:
    """Vanilla gradient saliency (Simonyan et al., 2014): max over channels of
    |d logit[target] / d image|, (N, H, W), >= 0."""
    return jnp.max(jnp.abs(input_gradients(model, variables, images, targets)), axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "chunk"))
def smoothgrad(model: nn.Module, variables: Any, images: jax.Array, key: jax.Array,
               targets: jax.Array | int | None = None, num_samples: int = 25,
               noise_level: float = 0.15, chunk: int = 8) -> jax.Array:
    """SmoothGrad (Smilkov et al., 2017): the input gradient averaged over `num_samples` noisy
    copies of each image (Gaussian, std = `noise_level` x the image's value range), reduced
    like `saliency`: (N, H, W), >= 0. The target is the clean image's. `chunk` noisy copies
    of the batch go through the model at once (memory against speed)."""
    images = _as_float(images, "smoothgrad")
    if num_samples < 1:
        raise ValueError(f"smoothgrad: num_samples must be >= 1, got {num_samples}.")
    targets = resolve_targets(predict(model, variables, images), targets)
    span = jnp.max(images, axis=(1, 2, 3), keepdims=True) - jnp.min(images, axis=(1, 2, 3),
                                                                    keepdims=True)

    def noisy_gradients(keys):
        noise = jax.vmap(lambda key: jax.random.normal(key, images.shape))(keys)
        return _batched_input_gradient(model, variables, images + noise * noise_level * span,
                                       targets)

    keys = jax.random.split(key, num_samples)
    weights = jnp.full((num_samples,), 1.0 / num_samples)
    mean_grad = _chunked_weighted_sum(noisy_gradients, keys, weights, chunk)
    return jnp.max(jnp.abs(mean_grad), axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "steps", "chunk"))
def integrated_gradients(model: nn.Module, variables: Any, images: jax.Array,
                         targets: jax.Array | int | None = None,
                         baseline: jax.Array | float = 0.0, steps: int = 50,
                         chunk: int = 8) -> jax.Array:
    """Integrated gradients (Sundararajan et al., 2017): (x - baseline) times the gradient
    averaged along the straight path from `baseline` (a number or an array broadcastable to
    the images; 0 is black, or the dataset mean after `normalize`) to x. The path integral is
    the trapezoidal rule over `steps` intervals (steps + 1 gradients). (N, H, W, C), signed;
    the attributions of an image sum to logit(x) - logit(baseline) up to the integration
    error (completeness), which shrinks as `steps` grows. `chunk` points of the path go
    through the model at once."""
    images = _as_float(images, "integrated_gradients")
    if steps < 1:
        raise ValueError(f"integrated_gradients: steps must be >= 1, got {steps}.")
    baseline = jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), images.shape)
    targets = resolve_targets(predict(model, variables, images), targets)
    alphas = jnp.linspace(0.0, 1.0, steps + 1)
    weights = jnp.full((steps + 1,), 1.0 / steps).at[0].mul(0.5).at[-1].mul(0.5)

    def gradients_at(alphas):
        path = baseline + alphas[:, None, None, None, None] * (images - baseline)
        return _batched_input_gradient(model, variables, path, targets)

    mean_grad = _chunked_weighted_sum(gradients_at, alphas, weights, chunk)
    return (images - baseline) * mean_grad


def _spatial_error(model, variables, images, layer, shape) -> ValueError:
    spatial = [lay.name for lay in list_layers(model, variables, images) if lay.spatial]
    return ValueError(f"Grad-CAM needs a spatial layer (output (N, H, W, C)); layer {layer!r} "
                      f"outputs shape {tuple(shape)}. Spatial layers: {', '.join(spatial)}.")


@functools.partial(jax.jit, static_argnames=("model", "layer", "upsample"))
def grad_cam(model: nn.Module, variables: Any, images: jax.Array, layer: str,
             targets: jax.Array | int | None = None, upsample: bool = True) -> jax.Array:
    """Grad-CAM (Selvaraju et al., 2017) on `layer`: its channels weighted by the spatial mean
    of the target logit's gradient, summed, ReLU; bilinearly resized to the image
    (`upsample`), else at the layer's resolution. (N, H, W), >= 0."""
    images = _as_float(images, "grad_cam")
    acts, grads, _ = layer_gradient(model, variables, images, layer, targets)
    if acts.ndim != 4:
        raise _spatial_error(model, variables, images, layer, acts.shape)
    acts, grads = acts.astype(jnp.float32), grads.astype(jnp.float32)
    weights = jnp.mean(grads, axis=(1, 2))
    cam = jax.nn.relu(jnp.einsum("nhwc,nc->nhw", acts, weights))
    if upsample:
        cam = jax.image.resize(cam, images.shape[:3], method="bilinear")
    return cam


def occlusion_windows(height: int, width: int, patch: int, stride: int
                      ) -> list[tuple[int, int]]:
    """The top-left corners of the occluding patches: every `stride` pixels, plus one flush
    with the bottom/right edge, so that every pixel is covered."""
    if not 1 <= patch <= min(height, width) or stride < 1:
        raise ValueError(f"occlusion: patch must be in [1, {min(height, width)}] (the image is "
                         f"{height}x{width}) and stride >= 1; got patch={patch}, stride={stride}.")

    def starts(size):
        s = list(range(0, size - patch + 1, stride))
        return s if s[-1] == size - patch else s + [size - patch]

    return [(i, j) for i in starts(height) for j in starts(width)]


@functools.partial(jax.jit, static_argnames=("model", "patch", "stride", "chunk"))
def occlusion(model: nn.Module, variables: Any, images: jax.Array,
              targets: jax.Array | int | None = None, patch: int = 8, stride: int = 4,
              value: float = 0.0, chunk: int = 16) -> jax.Array:
    """Occlusion sensitivity (Zeiler & Fergus, 2014): a `patch` x `patch` square of `value`
    slides over the image by `stride`; each pixel gets the mean drop of the target logit over
    the patches covering it. (N, H, W), signed: > 0 where hiding the pixel lowers the score.
    `value` 0 is black on [0, 1] images, the dataset mean after `normalize`; `chunk` patch
    positions are evaluated at once."""
    images = _as_float(images, "occlusion")
    n, height, width, _ = images.shape
    logits = predict(model, variables, images)
    targets = resolve_targets(logits, targets)
    clean = target_scores(logits, targets)
    windows = occlusion_windows(height, width, patch, stride)
    masks = np.zeros((len(windows), height, width), np.float32)
    for k, (i, j) in enumerate(windows):
        masks[k, i:i + patch, j:j + patch] = 1.0
    masks = jnp.asarray(masks)

    def drop_maps(masks):   # (k, H, W) -> (k, N, H, W)
        hidden = jnp.where(masks[:, None, :, :, None] > 0, value, images)    # (k, N, H, W, C)
        k = masks.shape[0]
        logits = predict(model, variables, hidden.reshape(k * n, *images.shape[1:]))
        drop = clean - target_scores(logits, jnp.tile(targets, k)).reshape(k, n)
        return drop[:, :, None, None] * masks[:, None]

    total = _chunked_weighted_sum(drop_maps, masks, jnp.ones((len(windows),)), chunk)
    return total / jnp.sum(masks, axis=0)[None]


def attribution_map(attributions: jax.Array) -> jax.Array:
    """(N, H, W, C) attributions -> (N, H, W): the sum over channels of their magnitudes."""
    return jnp.sum(jnp.abs(attributions), axis=-1)


def default_cam_layer(model: nn.Module, variables: Any, images: jax.Array) -> str:
    """The last layer computed whose output is spatial and larger than 1x1 (for a CNN: the last
    convolutional block before pooling to a vector)."""
    spatial = [lay for lay in list_layers(model, variables, images)
               if lay.spatial and lay.shape[1] * lay.shape[2] > 1]
    if not spatial:
        raise ValueError(f"{type(model).__name__} has no spatial layer larger than 1x1 on "
                         f"{tuple(images.shape[1:])} images; Grad-CAM needs one.")
    return spatial[-1].name


def _gradcam(model, variables, images, *, key, layer, targets, **options):
    layer = layer or default_cam_layer(model, variables, images)
    return grad_cam(model, variables, images, layer, targets, **options)


def _smoothgrad(model, variables, images, *, key, layer, targets, **options):
    if key is None:
        raise ValueError("smoothgrad draws noise: pass key=jax.random.key(seed).")
    return smoothgrad(model, variables, images, key, targets, **options)


def _integrated_gradients(model, variables, images, *, key, layer, targets, **options):
    return attribution_map(integrated_gradients(model, variables, images, targets, **options))


def _no_key_no_layer(fn):
    def method(model, variables, images, *, key, layer, targets, **options):
        return fn(model, variables, images, targets, **options)
    return method


# name -> fn(model, variables, images, *, key, layer, targets, **options) -> (N, H, W) map,
# higher meaning more important for the target class.
METHODS: dict[str, Callable[..., jax.Array]] = {
    "saliency": _no_key_no_layer(saliency),
    "smoothgrad": _smoothgrad,
    "gradcam": _gradcam,
    "integrated_gradients": _integrated_gradients,
    "occlusion": _no_key_no_layer(occlusion),
}
LAYER_METHODS = ("gradcam",)  # the methods that use `layer`


def explain(method: str, model: nn.Module, variables: Any, images: jax.Array, *,
            key: jax.Array | None = None, layer: str | None = None,
            targets: jax.Array | int | None = None, **options) -> jax.Array:
    """One (N, H, W) importance map per image by the method named `method` (see `METHODS`);
    `layer` is for Grad-CAM (default: `default_cam_layer`), `key` for SmoothGrad; `options`
    go to the method's function."""
    if method not in METHODS:
        raise ValueError(f"Unknown explanation method {method!r}. Valid choices: "
                         f"{', '.join(METHODS)}.")
    if layer is not None and method not in LAYER_METHODS:
        raise ValueError(f"Method {method!r} explains the input and takes no layer; the methods "
                         f"with a layer: {', '.join(LAYER_METHODS)}.")
    return METHODS[method](model, variables, images, key=key, layer=layer, targets=targets,
                           **options)
