"""Explain a trained run's predictions: heat maps over images, feature maps, first-layer filters.

    python -m experiments.explain runs/lenet5_digits --method gradcam --layer C3 --num_test 8
    python -m experiments.explain runs/lenet5_digits --method smoothgrad --images a.png b.png
    python -m experiments.explain runs/lenet5_digits --method activations --layer C1
    python -m experiments.explain runs/lenet5_digits --method filters
    python -m experiments.explain runs/lenet5_digits --list_layers

The run's `config.json` gives the model, the dataset (its classes, image size and
statistics) and the evaluation transforms, which every image goes through, as in
evaluation. Images are files (`--images`, resized to the dataset's image size) or the first
test images (`--num_test`). Writes one PNG per image into `--out` (default
WORKDIR/explain/): input | heat map | overlay for the heat-map methods (`cnn_jax.explain.METHODS`:
saliency, smoothgrad, gradcam, integrated_gradients, occlusion), the layer's feature maps
for `activations`; one grid for `filters`.

The variables come from the run's checkpoints (`load_run`), or from a file of
`flax.serialization.msgpack_serialize({'params': ..., 'batch_stats': ...})` (`--variables`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization

from cnn_jax import explain as ex
from cnn_jax.data import get_dataset
from cnn_jax.data.transforms import make_preprocess
from cnn_jax.models import get_model

EXTRA_METHODS = ("activations", "filters")


def _options(section: dict) -> dict:
    return {k: v for k, v in section.items() if k != "name"}


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """The run's model, as `train_and_evaluate` built it (one device)."""
    kwargs = _options(config.model.to_dict())
    kwargs["dtype"] = jnp.dtype(kwargs.get("dtype", "float32"))
    return get_model(config.model.name, num_classes=num_classes, **kwargs)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a training run's workdir "
                                "(python -m experiments.train ... --workdir DIR writes it).")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def check_variables(variables: Any, expected: Any, source: str) -> dict:
    """`variables` restricted to the collections the model has, checked leaf by leaf
    against the model's own shapes."""
    variables = {k: variables[k] for k in expected if k in variables}
    missing = [k for k in expected if k not in variables]
    if missing:
        raise ValueError(f"{source} has no {missing} (it holds {sorted(variables)}).")
    want = jax.tree_util.tree_flatten_with_path(expected)[0]
    got = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
    for path, leaf in want:
        name = jax.tree_util.keystr(path)
        if path not in got:
            raise ValueError(f"{source} does not match the run's model: {name} is missing.")
        if tuple(np.shape(got[path])) != tuple(leaf.shape):
            raise ValueError(f"{source} does not match the run's model: {name} has shape "
                             f"{np.shape(got[path])}, the model needs {leaf.shape}.")
    return jax.tree.map(jnp.asarray, variables)


def load_variables_file(path: str) -> Any:
    with open(path, "rb") as f:
        return serialization.msgpack_restore(f.read())


def restore_checkpoint(workdir: str) -> Any:
    """The variables of the latest checkpoint of the run in `workdir`."""
    from cnn_jax.train.checkpoint import restore_variables
    return restore_variables(workdir)[0]


def load_run(workdir: str, variables_path: str | None = None):
    """(model, variables, config) of the run in `workdir`: the model from its config.json,
    the variables ({'params', 'batch_stats'}) from its latest checkpoint, or from
    `variables_path` (a msgpack file of flax.serialization) when given."""
    return _load_run(workdir, variables_path)[:3]


def _load_run(workdir, variables_path):
    config = read_config(workdir)
    dataset = get_dataset(config.dataset.name, "test", **_options(config.dataset.to_dict()))
    model = build_model(config, dataset.num_classes)
    if variables_path is not None:
        variables, source = load_variables_file(variables_path), variables_path
    else:
        checkpoint_dir = os.path.join(workdir, "checkpoints")
        if not os.path.isdir(checkpoint_dir):
            raise FileNotFoundError(
                f"{workdir} has no checkpoints/ folder, so there are no trained parameters to "
                "explain. Train with checkpointing, or pass --variables FILE.msgpack "
                "(flax.serialization.msgpack_serialize({'params': ..., 'batch_stats': ...})).")
        variables, source = restore_checkpoint(workdir), checkpoint_dir
    dummy = jax.ShapeDtypeStruct((1, *input_shape(config, dataset)), jnp.float32)
    expected = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), dummy)
    return model, check_variables(variables, expected, source), config, dataset


def preprocess_fn(config, dataset):
    preprocess = make_preprocess(config.eval_transforms, train=False,
                                 num_classes=dataset.num_classes, mean=dataset.mean,
                                 std=dataset.std)
    return jax.jit(lambda images: preprocess(jax.random.key(0), {
        "image": images, "label": jnp.zeros(len(images), jnp.int32)})["image"])


def input_shape(config, dataset) -> tuple[int, ...]:
    images = jax.ShapeDtypeStruct((1, *dataset.image_shape), jnp.float32)
    return tuple(jax.eval_shape(preprocess_fn(config, dataset), images).shape[1:])


def read_image(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """An image file as (H, W, C) uint8 with the dataset's size and channels."""
    from PIL import Image
    height, width, channels = shape
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB").resize((width, height),
                                                                       Image.BILINEAR)
        array = np.asarray(image, np.uint8)
    return array[..., None] if channels == 1 else array


def load_images(config, dataset, image_paths, num_test) -> tuple[np.ndarray, list[str], list]:
    """The raw images (as the dataset stores them), their names and true labels (None for
    files)."""
    if image_paths:
        images = np.stack([read_image(p, dataset.image_shape) for p in image_paths])
        names = [os.path.splitext(os.path.basename(p))[0] for p in image_paths]
        return images, names, [None] * len(images)
    count = min(num_test, len(dataset))
    examples = [dataset.source[i] for i in range(count)]
    return (np.stack([np.asarray(e["image"]) for e in examples]),
            [f"test{i:04d}" for i in range(count)], [int(e["label"]) for e in examples])


def parse_target(target: str | None, class_names) -> int | None:
    if target is None:
        return None
    if target in class_names:
        return list(class_names).index(target)
    if target.isdigit() and int(target) < len(class_names):
        return int(target)
    raise ValueError(f"Unknown --target {target!r}. Valid: a class index 0..{len(class_names) - 1} "
                     f"or a class name: {', '.join(class_names)}.")


def run(args) -> list[str]:
    """Writes the PNGs; returns their paths."""
    model, variables, config, dataset = _load_run(args.workdir, args.variables)
    out = args.out or os.path.join(args.workdir, "explain")
    preprocess = preprocess_fn(config, dataset)
    raw, names, labels = load_images(config, dataset, args.images, args.num_test)
    images = preprocess(jnp.asarray(raw))
    if args.list_layers:
        for layer in ex.list_layers(model, variables, images[:1]):
            print(f"{layer.name:<32}{layer.kind:<14}{str(layer.shape[1:]):<18}{layer.act or ''}")
        return []
    if args.method == "filters":
        name, kernel = ex.first_conv_kernel(model, variables, images[:1])
        path = ex.save_png(os.path.join(out, f"filters_{name.replace('/', '.')}.png"),
                           ex.filter_grid(kernel))
        print(f"{name}: {kernel.shape[-1]} filters {kernel.shape[:3]} -> {path}")
        return [path]
    logits = jax.jit(lambda v, x: ex.forward(model, v, x)[0])(variables, images)
    predicted = np.asarray(jnp.argmax(logits, -1))
    probs = np.asarray(jax.nn.softmax(logits))
    target = parse_target(args.target, dataset.class_names)
    targets = predicted if target is None else np.full(len(images), target)
    suffix = f"{args.method}" + (f"_{args.layer.replace('/', '.')}" if args.layer else "")
    if args.method == "activations":
        layer = args.layer or ex.activation_layers(model, variables, images[:1])[0]
        maps = np.asarray(ex.activations(model, variables, images, layer))
        if maps.ndim != 4:
            raise ValueError(f"Layer {layer!r} outputs shape {maps.shape}: not feature maps.")
        pictures = [ex.enlarge(ex.activation_grid(m), 256) for m in maps]
        suffix = f"activations_{layer.replace('/', '.')}"
    else:
        heat = np.asarray(ex.explain(args.method, model, variables, images,
                                     key=jax.random.key(args.seed), layer=args.layer,
                                     targets=jnp.asarray(targets)))
        pictures = [np.concatenate([ex.to_rgb(x), ex.colorize(h), ex.overlay(x, h)], axis=1)
                    for x, h in zip(np.asarray(images), heat)]
        pictures = [ex.enlarge(p, 128) for p in pictures]
    paths = []
    for name, label, pred, t, picture in zip(names, labels, predicted, targets, pictures):
        path = ex.save_png(os.path.join(out, f"{name}_{suffix}.png"), picture)
        truth = "" if label is None else f"label {dataset.class_names[label]}, "
        print(f"{path}: {truth}predicted {dataset.class_names[pred]} "
              f"({probs[len(paths), pred]:.0%}), explained {dataset.class_names[t]}")
        paths.append(path)
    return paths


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m experiments.explain",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="a training run's workdir (holds config.json)")
    parser.add_argument("--method", default="gradcam",
                        choices=[*ex.METHODS, *EXTRA_METHODS])
    parser.add_argument("--layer", default=None,
                        help="layer for gradcam/activations (default: the last spatial layer / "
                             "the first activation); --list_layers lists them")
    parser.add_argument("--images", nargs="+", default=None, help="image files to explain")
    parser.add_argument("--num_test", type=int, default=8,
                        help="without --images: the first N test images")
    parser.add_argument("--target", default=None,
                        help="class to explain (index or name); default: the predicted one")
    parser.add_argument("--variables", default=None,
                        help="a msgpack file of {'params', 'batch_stats'} instead of the "
                             "run's checkpoint")
    parser.add_argument("--out", default=None, help="output folder (default WORKDIR/explain)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (smoothgrad's noise)")
    parser.add_argument("--list_layers", action="store_true", help="list the layers and exit")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from cnn_jax.errors import run_main
    sys.exit(run_main(main))
