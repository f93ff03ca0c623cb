"""Reading and differentiating any named layer of any model, with no change to the model.

A layer is a submodule, named by its path from the root joined with '/': 'C3' (a ConvBlock of
LeNet-5, its output after the activation), 'C3/conv' (the convolution inside it, before the
activation), 'layer4_1' (a residual block's output, after the addition and ReLU). Flax's
`nn.intercept_methods` sees every submodule's `__call__`: it records the output of the layers
asked for, and adds a (zero) perturbation to one of them so that the gradient of a score with
respect to that perturbation is the gradient with respect to the layer's output.

    layers = list_layers(model, variables, images)          # name, kind, output shape
    logits, acts = forward(model, variables, images, ("C3",))
    acts, grads = layer_gradient(model, variables, images, "C3", targets)

Everything runs in evaluation mode (`train=False`: BatchNorm reads its running statistics,
no dropout), so examples are independent and the gradient of a sum over the batch is each
example's own gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn


class Layer(NamedTuple):
    name: str                  # the path from the root, joined with '/'
    kind: str                  # the module's class: 'ConvBlock', 'Conv', 'BatchNorm', ...
    shape: tuple[int, ...]     # the output shape, batch axis included
    act: str | None            # the module's `act` attribute (e.g. 'relu'), if it has one

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 4


def layer_name(module: nn.Module) -> str:
    return "/".join(module.path)


def _is_layer_call(context) -> bool:
    return context.method_name == "__call__" and len(context.module.path) > 0


def list_layers(model: nn.Module, variables: Any, images: jax.Array) -> list[Layer]:
    """Every layer of `model` on `images` (an array or `jax.ShapeDtypeStruct`), in the order
    their outputs are computed (a block after the layers inside it). Runs on shapes only."""
    layers = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _is_layer_call(context) and isinstance(out, jax.Array):
            layers.append(Layer(layer_name(context.module), type(context.module).__name__,
                                tuple(out.shape), getattr(context.module, "act", None)))
        return out

    def run(variables, images):
        with nn.intercept_methods(record):
            return model.apply(variables, images, train=False)

    jax.eval_shape(run, variables, images)
    return layers


def unknown_layer_error(model, variables, images, names: Sequence[str]) -> ValueError:
    layers = list_layers(model, variables, images)
    valid = [layer.name for layer in layers]
    missing = [n for n in names if n not in valid]
    return ValueError(f"Unknown layer(s) {missing} in {type(model).__name__}. Valid layers, in "
                      f"the order they compute: {', '.join(valid)}.")


def check_images(images: jax.Array, what: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{what} takes a batch of images shaped (N, H, W, C); got shape "
                         f"{tuple(images.shape)}. Add a batch axis with images[None].")


def forward(model: nn.Module, variables: Any, images: jax.Array, layers: Sequence[str] = (),
            perturb: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The logits and the outputs of `layers` (a dict by name). `perturb` maps a layer name
    to an array added to that layer's output (the first call, if a module is called twice).
    An unknown name is an error listing the layers that exist."""
    perturb = perturb or {}
    wanted = set(layers) | set(perturb)
    captured = {}

    def capture(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _is_layer_call(context):
            name = layer_name(context.module)
            if name in wanted and name not in captured:
                captured[name] = out
                if name in perturb:
                    out = out + perturb[name].astype(out.dtype)
        return out

    with nn.intercept_methods(capture):
        logits = model.apply(variables, images, train=False)
    if wanted - set(captured):
        raise unknown_layer_error(model, variables, images, sorted(wanted - set(captured)))
    return logits.astype(jnp.float32), {name: captured[name] for name in layers}


def resolve_targets(logits: jax.Array, targets: jax.Array | int | None) -> jax.Array:
    """Class indices (N,): the predicted class when `targets` is None; an int is broadcast."""
    if targets is None:
        return jnp.argmax(logits, axis=-1)
    targets = jnp.broadcast_to(jnp.asarray(targets, jnp.int32), logits.shape[:1])
    return targets


def target_scores(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Each example's logit for its target class, (N,)."""
    return jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]


def layer_gradient(model: nn.Module, variables: Any, images: jax.Array, layer: str,
                   targets: jax.Array | int | None = None
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The output of `layer`, the gradient of each example's target logit with respect to it
    (same shape), and the targets used (the predicted class where `targets` is None)."""
    _, shapes = jax.eval_shape(lambda: forward(model, variables, images, (layer,)))
    delta = jnp.zeros(shapes[layer].shape, shapes[layer].dtype)

    def score(delta):
        logits, acts = forward(model, variables, images, (layer,), {layer: delta})
        chosen = resolve_targets(jax.lax.stop_gradient(logits), targets)
        return jnp.sum(target_scores(logits, chosen)), (acts[layer], chosen)

    grads, (acts, chosen) = jax.grad(score, has_aux=True)(delta)
    return acts, grads, chosen


def input_gradient(model: nn.Module, variables: Any, images: jax.Array, targets: jax.Array
                   ) -> jax.Array:
    """The gradient of each example's target logit with respect to its image (N, H, W, C)."""
    def score(images):
        logits = model.apply(variables, images, train=False).astype(jnp.float32)
        return jnp.sum(target_scores(logits, targets))

    return jax.grad(score)(images)


def predict(model: nn.Module, variables: Any, images: jax.Array) -> jax.Array:
    return model.apply(variables, images, train=False).astype(jnp.float32)
