"""Feature extraction from any named layer, and a linear probe trained on the features.

    extract = feature_fn(model, layer="penultimate")            # pure; jit it
    features = extract(variables, images)                       # (N, D)
    features, labels = extract_features(model, variables, dataset, preprocess=preprocess)
    save_features("train.npz", features, labels)
    probe = train_linear_probe(features, labels, num_classes=10)
    accuracy = probe.accuracy(test_features, test_labels)

A layer is a module's path ('/'-joined names: `layer4_1`, `fc2`, `layer3_0/conv2`, `F6`); its
output is the feature. `penultimate` (the default) is the input of the classifier `head`:
ResNet's pooled features, VGG's and AlexNet's second 4096-wide layer, LeNet-5's F6. A
feature map (N, H, W, C) is reduced by `spatial`: 'avg' (global average, default), 'max',
'flatten', or 'none' (kept as it is). The model runs in inference mode (BatchNorm's running
statistics, no dropout).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from cnn_jax import data as data_lib

PENULTIMATE = "penultimate"
SPATIAL = ("avg", "max", "flatten", "none")


def _module_name(module: nn.Module) -> str:
    return "/".join(module.path)


def layer_names(model: nn.Module, variables: Any, input_shape: tuple[int, ...]) -> list[str]:
    """Every module path of `model` a feature can be taken from, in call order (the model is
    traced, not run)."""
    names = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.path:
            name = _module_name(context.module)
            if name not in names:
                names.append(name)
        return next_fun(*args, **kwargs)

    def run(variables):
        with nn.intercept_methods(record):
            return model.apply(variables, jnp.zeros((1, *input_shape), jnp.float32), train=False)

    jax.eval_shape(run, variables)
    return names


def _reduce(x: jax.Array, spatial: str) -> jax.Array:
    if x.ndim != 4 or spatial == "none":
        return x
    if spatial == "avg":
        return jnp.mean(x, axis=(1, 2))
    if spatial == "max":
        return jnp.max(x, axis=(1, 2))
    return x.reshape(x.shape[0], -1)


def feature_fn(model: nn.Module, layer: str = PENULTIMATE, spatial: str = "avg"
               ) -> Callable[[Any, jax.Array], jax.Array]:
    """`fn(variables, images) -> features`: the output of module `layer` (or, for
    'penultimate', the input of `head`), reduced over space by `spatial`. Pure; jit it."""
    if spatial not in SPATIAL:
        raise ValueError(f"Unknown spatial reduction {spatial!r}. Valid choices: "
                         f"{', '.join(SPATIAL)}.")
    target, take_input = ("head", True) if layer == PENULTIMATE else (layer, False)

    def fn(variables, images):
        captured = []

        def capture(next_fun, args, kwargs, context):
            hit = (context.method_name == "__call__" and not captured
                   and _module_name(context.module) == target)
            if hit and take_input:
                captured.append(args[0])
            out = next_fun(*args, **kwargs)
            if hit and not take_input:
                captured.append(out)
            return out

        with nn.intercept_methods(capture):
            model.apply(variables, images, train=False)
        if not captured:
            names = layer_names(model, variables, images.shape[1:])
            raise ValueError(f"{type(model).__name__} has no layer {layer!r}. Layers: "
                             f"{PENULTIMATE}, {', '.join(names)}.")
        if not isinstance(captured[0], jax.Array):
            raise ValueError(f"Layer {layer!r} returns a {type(captured[0]).__name__}, not an "
                             "array; pick one of its sub-layers.")
        return _reduce(captured[0], spatial).astype(jnp.float32)

    return fn


def extract_features(model: nn.Module, variables: Any, dataset: data_lib.Dataset, *,
                     layer: str = PENULTIMATE, spatial: str = "avg", batch_size: int = 256,
                     preprocess: Callable | None = None, num_threads: int = 2
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, ...), labels (N,)) of every example of `dataset`, in order.
    `preprocess(key, batch) -> batch` (e.g. `make_preprocess(config.eval_transforms,
    train=False, ...)`) runs on the batch first; by default images are scaled to [0, 1]."""
    extract = feature_fn(model, layer, spatial)

    @jax.jit
    def run(variables, batch):
        if preprocess is not None:
            batch = preprocess(jax.random.key(0), batch)
        else:
            image = batch["image"]
            batch = {**batch, "image": image.astype(jnp.float32) / (
                255.0 if image.dtype == jnp.uint8 else 1.0)}
        return extract(variables, batch["image"])

    features, labels = [], []
    for batch in data_lib.eval_batches(dataset, batch_size, num_threads=num_threads):
        keep = np.asarray(batch["mask"]).astype(bool)
        out = np.asarray(run(variables, {k: v for k, v in batch.items() if k != "mask"}))
        features.append(out[keep])
        labels.append(np.asarray(batch["label"])[keep])
    return np.concatenate(features), np.concatenate(labels).astype(np.int32)


def save_features(path: str, features: np.ndarray, labels: np.ndarray | None = None,
                  **extra: Any) -> None:
    """`.npz`: arrays `features`, `labels` (and any `extra`); `.npy`: the features alone."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        arrays = {"features": features, **({"labels": labels} if labels is not None else {})}
        np.savez(path, **arrays, **{k: np.asarray(v) for k, v in extra.items()})
    elif path.endswith(".npy"):
        np.save(path, features)
    else:
        raise ValueError(f"Features are saved as .npz (features and labels) or .npy (features "
                         f"only), not {path!r}.")


def load_features(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(features, labels or None) as `save_features` wrote them."""
    if os.fspath(path).endswith(".npy"):
        return np.load(path), None
    with np.load(path) as data:
        return data["features"], (data["labels"] if "labels" in data else None)


@jax.jit
def _fit_logistic(xs, onehot, l2, tol, max_iter):
    """L-BFGS (zoom line search) on the L2-regularized multinomial logistic loss, from zero,
    until the gradient norm is below `tol` or after `max_iter` iterations. Compiled once per
    feature shape."""
    def objective(params):
        logits = xs @ params["kernel"] + params["bias"]
        return (jnp.mean(optax.softmax_cross_entropy(logits, onehot))
                + 0.5 * l2 * jnp.sum(params["kernel"] ** 2))

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                       value_fn=objective)
        return optax.apply_updates(params, updates), state

    def keep_going(carry):
        _, state = carry
        count = optax.tree.get(state, "count")
        grad = optax.tree.get(state, "grad")
        return (count == 0) | ((count < max_iter) & (optax.tree.norm(grad) >= tol))

    params = {"kernel": jnp.zeros((xs.shape[1], onehot.shape[1])),
              "bias": jnp.zeros(onehot.shape[1])}
    params, state = jax.lax.while_loop(keep_going, step, (params, solver.init(params)))
    return params, objective(params), optax.tree.get(state, "count")


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """A softmax classifier on (standardized) features."""
    kernel: np.ndarray  # (D, K)
    bias: np.ndarray    # (K,)
    mean: np.ndarray    # (D,) feature standardization
    scale: np.ndarray   # (D,)
    loss: float         # the final training objective
    iterations: int

    def logits(self, features: np.ndarray) -> np.ndarray:
        x = (np.asarray(features, np.float32).reshape(len(features), -1) - self.mean) / self.scale
        return x @ self.kernel + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(features), axis=-1)

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.predict(features) == np.asarray(labels)))


def train_linear_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                       l2: float = 1e-3, max_iter: int = 1000, tol: float = 1e-6,
                       standardize: bool = True) -> LinearProbe:
    """Multinomial logistic regression on `features`, full batch, with L-BFGS (optax) to
    convergence: minimizes mean cross-entropy + l2 / 2 * |kernel|^2 (the bias is not
    penalized). This is scikit-learn's `LogisticRegression(C=1 / (l2 * N))`. Features are
    standardized first (mean 0, std 1 per dimension, from these features) unless
    `standardize=False`."""
    x = np.asarray(features, np.float32).reshape(len(features), -1)
    y = np.asarray(labels)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} feature rows but {len(y)} labels.")
    data_lib.check_labels(y, num_classes, "train_linear_probe")
    mean = x.mean(0) if standardize else np.zeros(x.shape[1], np.float32)
    scale = x.std(0) if standardize else np.ones(x.shape[1], np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    xs = jnp.asarray((x - mean) / scale)
    onehot = jax.nn.one_hot(jnp.asarray(y), num_classes)

    params, loss, count = _fit_logistic(xs, onehot, jnp.float32(l2), jnp.float32(tol),
                                        jnp.int32(max_iter))
    return LinearProbe(np.asarray(params["kernel"]), np.asarray(params["bias"]), mean, scale,
                       float(loss), int(count))
