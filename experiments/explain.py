"""Explain a trained run's predictions: heat maps over images, feature maps, first-layer filters.

    python -m experiments.explain runs/lenet5_digits --method gradcam --layer C3 --num_test 8
    python -m experiments.explain runs/lenet5_digits --method smoothgrad --images a.png b.png
    python -m experiments.explain runs/lenet5_digits --method activations --layer C1
    python -m experiments.explain runs/lenet5_digits --method filters
    python -m experiments.explain runs/lenet5_digits --list_layers

The run's `config.json` gives the model, the dataset (its classes, image size and statistics)
and the evaluation transforms, which every image goes through, as in evaluation. Images are
files (`--images`, scaled and centre-cropped to the dataset's image size) or N test images
spread over the classes (`--num_test`, the same N every time). Writes one PNG per image into
`--out` (default WORKDIR/explain/), titled with the true label, the prediction and its
probability: input | heat map with its colour bar | overlay for the heat-map methods
(`cnn_jax.explain.METHODS`: saliency, smoothgrad, gradcam, integrated_gradients, occlusion);
the layer's numbered feature maps, dead channels marked, for `activations`; the numbered
filters on one scale for `filters`.

The variables come from the run's latest checkpoint (`experiments.cli.load_run`), or from a
file of `flax.serialization.msgpack_serialize({'params': ..., 'batch_stats': ...})` (`--variables`).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import explain as ex
from cnn_jax.explain.plot import activation_figure, explanation_figure, filter_figure
from cnn_jax.errors import UserError, run_main
from experiments.cli import load_run, read_image

EXTRA_METHODS = ("activations", "filters")
LABEL_SCAN = 2000  # test examples whose labels are read to sample across classes, at most


def sample_test(dataset, count: int, seed: int = 0) -> list[int]:
    """`count` test indices spread over the classes, deterministic: each class's examples in
    a fixed random order (`seed`), taken class by class in turn (0, 1, 2, ..., 0, 1, ...).
    Test splits are often sorted by class, so the first N would all be of one class."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    labels = getattr(dataset.source, "labels", None)
    if labels is None:  # read the labels of a random prefix (a TFDS or file source)
        order = order[:LABEL_SCAN]
        labels = {int(i): int(dataset.source[int(i)]["label"]) for i in order}
    by_class: dict[int, list[int]] = {}
    for i in order:
        by_class.setdefault(int(labels[int(i)]), []).append(int(i))
    queues = [by_class[c] for c in sorted(by_class)]
    chosen = []
    while len(chosen) < min(count, len(order)):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def load_images(config, dataset, image_paths, num_test) -> tuple[np.ndarray, list[str], list]:
    """The raw images (as the dataset stores them), their names and true labels (None for
    files)."""
    if image_paths:
        images = np.stack([read_image(p, dataset.image_shape) for p in image_paths])
        names = [os.path.splitext(os.path.basename(p))[0] for p in image_paths]
        return images, names, [None] * len(images)
    if num_test < 1:
        raise UserError(f"--num_test must be at least 1, got {num_test}.")
    indices = sample_test(dataset, num_test)
    examples = [dataset.source[i] for i in indices]
    return (np.stack([np.asarray(e["image"]) for e in examples]),
            [f"test{i:04d}" for i in indices], [int(e["label"]) for e in examples])


def parse_target(target: str | None, class_names) -> int | None:
    if target is None:
        return None
    if target in class_names:
        return list(class_names).index(target)
    if target.isdigit() and int(target) < len(class_names):
        return int(target)
    raise UserError(f"Unknown --target {target!r}. Valid: a class index 0..{len(class_names) - 1} "
                     f"or a class name: {', '.join(class_names)}.")


def run(args) -> list[str]:
    """Writes the PNGs; returns their paths."""
    loaded = load_run(args.workdir, args.variables)
    model, variables, config = loaded.model, loaded.variables, loaded.config
    dataset = loaded.dataset
    out = args.out or os.path.join(args.workdir, "explain")
    preprocess = loaded.preprocess
    raw, names, labels = load_images(config, dataset, args.images, args.num_test)
    images = preprocess(jnp.asarray(raw))
    if args.list_layers:
        for layer in ex.list_layers(model, variables, images[:1]):
            print(f"{layer.name:<32}{layer.kind:<14}{str(layer.shape[1:]):<18}{layer.act or ''}")
        return []
    if args.method == "filters":
        name, kernel = ex.first_conv_kernel(model, variables, images[:1])
        path = ex.save_png(os.path.join(out, f"filters_{name.replace('/', '.')}.png"),
                           filter_figure(kernel, f"{config.model.name} {name}"))
        print(f"{name}: {kernel.shape[-1]} filters {kernel.shape[:3]} -> {path}")
        return [path]
    logits = jax.jit(lambda v, x: ex.forward(model, v, x)[0])(variables, images)
    predicted = np.asarray(jnp.argmax(logits, -1))
    probs = np.asarray(jax.nn.softmax(logits))
    target = parse_target(args.target, dataset.class_names)
    targets = predicted if target is None else np.full(len(images), target)
    classes = dataset.class_names
    captions = [(f"{name}: " + ("" if label is None else f"label {classes[label]} | ")
                 + f"predicted {classes[pred]} ({probs[i, pred]:.0%})")
                for i, (name, label, pred) in enumerate(zip(names, labels, predicted))]
    suffix = f"{args.method}" + (f"_{args.layer.replace('/', '.')}" if args.layer else "")
    if args.method == "activations":
        layer = args.layer or ex.activation_layers(model, variables, images[:1])[0]
        maps = np.asarray(ex.activations(model, variables, images, layer))
        if maps.ndim != 4:
            raise UserError(f"Layer {layer!r} outputs shape {maps.shape}: not feature maps.")
        dead = (maps <= 0).all(axis=(0, 1, 2))  # 0 on every image explained, everywhere
        where = f"on the {len(maps)} images explained" if len(maps) > 1 else "on this image"
        pictures = [activation_figure(m, f"{caption}\nlayer {layer} (0 is black; 'dead': 0 "
                                         f"everywhere {where})", dead)
                    for m, caption in zip(maps, captions)]
        suffix = f"activations_{layer.replace('/', '.')}"
    else:
        heat = np.asarray(ex.explain(args.method, model, variables, images,
                                     key=jax.random.key(args.seed), layer=args.layer,
                                     targets=jnp.asarray(targets)))
        what = args.method + (f" at {args.layer}" if args.layer else "")
        pictures = [explanation_figure(x, h, f"{caption} | explaining {classes[t]}",
                                       f"{what} for {classes[t]}")
                    for x, h, caption, t in zip(np.asarray(images), heat, captions, targets)]
    paths = []
    for name, label, pred, t, picture in zip(names, labels, predicted, targets, pictures):
        path = ex.save_png(os.path.join(out, f"{name}_{suffix}.png"), picture)
        truth = "" if label is None else f"label {classes[label]}, "
        print(f"{path}: {truth}predicted {classes[pred]} "
              f"({probs[len(paths), pred]:.0%}), explained {classes[t]}")
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
                        help="without --images: N test images spread over the classes (a fixed "
                             "choice)")
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
    """0, or 2 after printing a user's error in one line (`cnn_jax.errors.run_main`)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_main(lambda: run(args) and 0)


if __name__ == "__main__":
    sys.exit(run_main(main))
