"""Predict with a trained run on a folder of images: a CSV of the top-k classes.

    python -m experiments.predict runs/lenet5_digits my_digits/ --top_k 3
    python -m experiments.predict runs/my_images photos/ --checkpoint best --pictures

Every image file under the folder (sub-folders included; .png, .jpg, .jpeg) is scaled and
centre-cropped to the run's image size and goes through its evaluation transforms. Writes
`predictions.csv` into `--out` (default WORKDIR/predict/): one row per file, its path
relative to the folder, then class_1, probability_1, ..., class_k, probability_k, most
probable first. `--pictures` also draws each image with its top-k classes (pictures/*.png).

What is written depends on the run's task (`OUTPUTS`, chosen by `config.task`, default
classification): each task supplies one function from the model's outputs to files.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Callable

import numpy as np

from cnn_jax.errors import UserError, run_main
from cnn_jax.tasks import segmentation, task_name
from experiments.cli import CHECKPOINTS, Run, list_images, load_run, read_image

BATCH = 64


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def classification_outputs(run: Run, names: list[str], images: np.ndarray, outputs: np.ndarray,
                           out: str, top_k: int = 5, pictures: bool = False) -> list[str]:
    """predictions.csv (and pictures/<name>.png): the top-k classes of each image."""
    class_names = run.dataset.class_names
    k = min(top_k, len(class_names))
    probs = softmax(outputs.astype(np.float64))
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "predictions.csv")
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file"] + [f"{c}_{i + 1}" for i in range(k)
                                    for c in ("class", "probability")])
        for name, row, p in zip(names, top, probs):
            writer.writerow([name] + [v for c in row for v in (class_names[c], f"{p[c]:.6f}")])
    os.replace(path + ".tmp", path)
    written = [path]
    if pictures:
        for name, image, row, p in zip(names, images, top, probs):
            picture = os.path.join(out, "pictures", os.path.splitext(name)[0] + ".png")
            written.append(draw_prediction(picture, image, [(class_names[c], p[c]) for c in row]))
    return written


def draw_prediction(path: str, image: np.ndarray, ranked: list[tuple[str, float]]) -> str:
    """The image beside a bar chart of its top classes' probabilities."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(6, 2.6),
                                      gridspec_kw={"width_ratios": [1, 1.3]})
    left.imshow(image[..., 0] if image.shape[-1] == 1 else image,
                cmap="gray" if image.shape[-1] == 1 else None)
    left.set_title(f"{ranked[0][0]} ({ranked[0][1]:.0%})", fontsize=10)
    left.axis("off")
    labels, values = [r[0] for r in ranked][::-1], [r[1] for r in ranked][::-1]
    right.barh(range(len(values)), values, color="tab:blue")
    right.set_yticks(range(len(values)), labels, fontsize=8)
    right.set_xlim(0, 1)
    right.set_xlabel("probability", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# The per-task output: fn(run, names, raw images, model outputs, out folder, top_k, pictures).
OUTPUTS: dict[str, Callable[..., list[str]]] = {"classification": classification_outputs,
                                                 "segmentation": segmentation.write_outputs}


def predict(run: Run, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The raw images (as the dataset stores them) and the model's outputs, in batches."""
    images = np.stack([read_image(p, run.dataset.image_shape) for p in paths])
    preprocess = run.preprocess
    outputs = [run.logits(preprocess(images[i:i + BATCH])) for i in range(0, len(images), BATCH)]
    return images, np.concatenate(outputs)


def run_command(args) -> list[str]:
    if args.top_k < 1:
        raise UserError(f"--top_k must be at least 1, got {args.top_k}.")
    paths = list_images(args.images)  # before loading anything
    run = load_run(args.workdir, checkpoint=args.checkpoint, ema=args.ema)
    task = task_name(run.config)  # config.task, or the dataset's
    if task not in OUTPUTS:
        raise UserError(f"experiments.predict cannot write the outputs of task {task!r} "
                        f"(config.task); it knows {', '.join(OUTPUTS)}.")
    images, outputs = predict(run, paths)
    names = [os.path.relpath(p, args.images) for p in paths]
    out = args.out or os.path.join(args.workdir, "predict")
    written = OUTPUTS[task](run, names, images, outputs, out, top_k=args.top_k,
                            pictures=args.pictures)
    print(f"{len(paths)} images, {run.source}: -> {written[0]}"
          + (f" and {len(written) - 1} pictures" if len(written) > 1 else ""))
    return written


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m experiments.predict",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="a training run's workdir")
    parser.add_argument("images", help="a folder of image files (sub-folders included)")
    parser.add_argument("--checkpoint", default="latest",
                        help=f"{' | '.join(CHECKPOINTS)} | a step number")
    parser.add_argument("--ema", action="store_true",
                        help="use the checkpoint's moving average of the weights (a run "
                             "trained with config.ema.decay > 0)")
    parser.add_argument("--top_k", type=int, default=5, help="classes per image")
    parser.add_argument("--pictures", action="store_true",
                        help="also draw each image with its top classes")
    parser.add_argument("--out", default=None, help="output folder (default WORKDIR/predict)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """0, or 2 after printing a user's error in one line (`cnn_jax.errors.run_main`)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_main(lambda: run_command(args) and 0)


if __name__ == "__main__":
    sys.exit(run_main(main))
