"""Evaluate a trained run's checkpoint on a split of its dataset or on a folder of images.

    python -m experiments.evaluate runs/lenet5_digits                      # latest, test split
    python -m experiments.evaluate runs/lenet5_digits --checkpoint best --split train
    python -m experiments.evaluate runs/lenet5_digits --ema   # the weights' moving average
    python -m experiments.evaluate runs/my_images --images_dir new_photos/  # <class>/<files>

Prints the full metrics (loss, accuracy, top-5, macro and per-class precision/recall/F1, the
confusion matrix) and writes them as JSON (default WORKDIR/eval/<checkpoint>_<split>.json),
in the same form as the run's `final_metrics.json`. The images go through the run's
evaluation transforms, with its dataset's statistics, exactly as the training loop evaluates.

`--images_dir` holds one sub-folder per class, named as the run's classes (a subset of them is
fine); the files are scaled and centre-cropped to the run's image size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from cnn_jax.data import Dataset, get_dataset
from cnn_jax.data.image_folder import ImageFolderSource
from cnn_jax.errors import UserError, run_main
from experiments.cli import CHECKPOINTS, Run, section_options, list_images, load_run


def folder_dataset(folder: str, run: Run) -> Dataset:
    """`folder`/<class>/<images> as a dataset with the run's classes, size and statistics."""
    names = run.dataset.class_names
    if not os.path.isdir(folder):
        raise UserError(f"--images_dir {folder} does not exist (or is not a folder).")
    classes = sorted(d for d in os.listdir(folder)
                     if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
    unknown = [c for c in classes if c not in names]
    if not classes or unknown:
        raise UserError(f"--images_dir {folder} must hold one sub-folder per class, named as the "
                        f"run's classes ({', '.join(names)})"
                        + (f"; unknown: {', '.join(unknown)}." if unknown else "; it has none."))
    paths, labels = [], []
    for name in classes:
        files = list_images(os.path.join(folder, name))
        paths += files
        labels += [names.index(name)] * len(files)
    shape = run.dataset.image_shape
    return Dataset(ImageFolderSource(paths, labels, shape[:2], shape[2]), names, shape, folder,
                   run.dataset.mean, run.dataset.std)


def evaluate_run(run: Run, dataset: Dataset, batch_size: int = 256) -> dict:
    """The run's metrics on `dataset`, by the training loop's own evaluation (one device)."""
    import optax

    from cnn_jax.data.transforms import make_preprocess
    from cnn_jax.train.loop import evaluate, make_steps
    from cnn_jax.train.step import TrainState

    preprocess = make_preprocess(run.config.eval_transforms, train=False,
                                 num_classes=dataset.num_classes, mean=dataset.mean,
                                 std=dataset.std)
    _, eval_fn = make_steps(run.config, preprocess, preprocess)
    state = TrainState.create(apply_fn=run.model.apply, params=run.variables["params"],
                              tx=optax.identity(),
                              batch_stats=run.variables.get("batch_stats", {}))
    return evaluate(eval_fn, state, dataset, batch_size)


def format_metrics(metrics: dict, class_names) -> str:
    lines = [f"{metrics['num_examples']} images: accuracy {metrics['accuracy']:.2%}, loss "
             f"{metrics['loss']:.4f}" + (f", top-5 {metrics['top5_accuracy']:.2%}"
                                         if "top5_accuracy" in metrics else "")
             + f", macro precision {metrics['macro_precision']:.4f} recall "
             f"{metrics['macro_recall']:.4f} F1 {metrics['macro_f1']:.4f}",
             f"{'class':<16}{'precision':>10}{'recall':>10}{'F1':>10}{'images':>8}"]
    confusion = np.asarray(metrics["confusion_matrix"])
    for i, name in enumerate(class_names):
        lines.append(f"{name[:15]:<16}{metrics['per_class_precision'][i]:>10.4f}"
                     f"{metrics['per_class_recall'][i]:>10.4f}{metrics['per_class_f1'][i]:>10.4f}"
                     f"{int(confusion[i].sum()):>8}")
    lines.append("confusion matrix (rows: true class, columns: predicted):")
    lines += ["  " + " ".join(f"{v:>4}" for v in row) for row in confusion.tolist()]
    return "\n".join(lines)


def run_command(args) -> str:
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {args.batch_size}.")
    run = load_run(args.workdir, checkpoint=args.checkpoint, ema=args.ema)
    if args.images_dir:
        dataset, what = folder_dataset(args.images_dir, run), args.images_dir
    else:
        dataset = get_dataset(run.config.dataset.name, args.split,
                              **section_options(run.config.dataset.to_dict()))
        what = f"the {args.split} split of {run.config.dataset.name}"
        if dataset.class_names != run.dataset.class_names:
            raise UserError(f"The {args.split} split's classes differ from the run's.")
    metrics = evaluate_run(run, dataset, args.batch_size)
    record = {"workdir": args.workdir, "checkpoint": args.checkpoint, "ema": args.ema,
              "variables": run.source,
              "data": what,
              "class_names": list(dataset.class_names), **metrics}
    name = "images" if args.images_dir else args.split
    name = f"ema_{name}" if args.ema else name
    out = args.out or os.path.join(args.workdir, "eval", f"{args.checkpoint}_{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(out + ".tmp", out)  # never a half-written file
    print(f"{run.source} on {what}:\n" + format_metrics(metrics, dataset.class_names))
    print(f"-> {out}")
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m experiments.evaluate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="a training run's workdir")
    parser.add_argument("--checkpoint", default="latest",
                        help=f"{' | '.join(CHECKPOINTS)} (by the run's checkpoint.best_metric) "
                             "| a step number")
    parser.add_argument("--ema", action="store_true",
                        help="evaluate the checkpoint's moving average of the weights "
                             "(a run trained with config.ema.decay > 0)")
    parser.add_argument("--split", default="test", help="a split of the run's dataset")
    parser.add_argument("--images_dir", default=None,
                        help="evaluate on this folder (<class>/<images>) instead of a split")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--out", default=None,
                        help="the JSON file (default WORKDIR/eval/<checkpoint>_<split>.json, "
                             "<checkpoint>_ema_<split>.json with --ema)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """0, or 2 after printing a user's error in one line (`cnn_jax.errors.run_main`)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_main(lambda: run_command(args) and 0)


if __name__ == "__main__":
    sys.exit(run_main(main))
