"""The transfer experiment: pretrain, then learn a new task from few labels by fine-tuning,
linear probing, or from scratch, over several label draws; one table.

    python -m cnn_jax.data.prepare mnist --manual_dir path/to/mnist_gz_files --data_dir DIR
    python -m experiments.transfer --data_dir DIR --workdir runs/transfer

Settings (`--settings`, each a config file of experiments/configs/ whose parameter is the arm):

- `digits` (`transfer_digits.py`): LeNet-5 pretrained on MNIST, then the embedded 8x8 digits
  with 10 labels per class;
- `mnist_5to9` (`transfer_mnist_5to9.py`): pretrained on MNIST digits 0-4, then digits 5-9
  with 100 labels per class.

For each setting: 1. the `pretrain` arm (its variables saved to WORKDIR/<setting>/pretrain,
reused if already there); 2. for each label draw (`--seeds`) every other arm through the
training loop, plus `probe`: multinomial logistic regression (L-BFGS) on the pretrained
network's penultimate features (F6, 84 values) of the same labeled images; 3. test accuracy,
mean and standard deviation over the draws, to WORKDIR/results.md and results.json.
Finished runs are not rerun (delete WORKDIR to start over), so more draws can be added later.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import numpy as np

from cnn_jax.data import get_dataset
from cnn_jax.data.transforms import make_preprocess
from cnn_jax.models import get_model
from cnn_jax.train import train_and_evaluate
from cnn_jax.train.checkpoint import restore_variables
from cnn_jax.transfer import extract_features, train_linear_probe

SETTINGS = {
    "digits": ("transfer_digits", "MNIST → digits, 10 labels per class"),
    "mnist_5to9": ("transfer_mnist_5to9", "MNIST 0-4 → 5-9, 100 labels per class"),
}
ARMS = ("scratch", "probe", "frozen", "finetune", "finetune_lr", "gradual")
DESCRIPTIONS = {
    "scratch": "from scratch (random initialization)",
    "probe": "linear probe (L-BFGS on the pretrained F6 features)",
    "frozen": "frozen backbone, new head trained by SGD",
    "finetune": "fine-tune everything (pretrained backbone, new head)",
    "finetune_lr": "fine-tune, backbone at 0.1x the learning rate",
    "gradual": "frozen backbone for 100 steps, then fine-tune everything",
}


def arm_config(setting: str, arm: str, args, seed: int):
    module = importlib.import_module(f"experiments.configs.{SETTINGS[setting][0]}")
    config = module.get_config(arm)
    if "data_dir" in config.dataset:
        config.dataset.data_dir = args.data_dir
    if arm != "pretrain":
        config.dataset.subset_seed = seed
        config.seed = seed
        if config.transfer.init_from:
            config.transfer.init_from = pretrain_dir(setting, args)
    return config


def pretrain_dir(setting: str, args) -> str:
    return os.path.join(args.workdir, setting, "pretrain")


def pretrain(setting: str, args, log) -> None:
    workdir = pretrain_dir(setting, args)
    if os.path.exists(os.path.join(workdir, "final_metrics.json")):  # finished, checkpointed
        log(f"{setting}: reusing the pretrained variables in {workdir}")
        return
    config = arm_config(setting, "pretrain", args, 0)
    _, history = train_and_evaluate(config, workdir, log=log)  # checkpoints what init_from reads
    log(f"{setting}: pretrained, test accuracy {history[-1]['test_accuracy']:.2%}")


def linear_probe(setting: str, args, seed: int) -> float:
    config = arm_config(setting, "scratch", args, seed)
    options = {k: v for k, v in config.dataset.to_dict().items() if k != "name"}
    train = get_dataset(config.dataset.name, "train", **options)
    test = get_dataset(config.dataset.name, "test", **options)
    variables, source_config = restore_variables(pretrain_dir(setting, args))
    model = get_model(source_config["model"]["name"],
                      num_classes=variables["params"]["head"]["bias"].shape[0])
    preprocess = make_preprocess(config.eval_transforms, train=False,
                                 num_classes=train.num_classes, mean=train.mean, std=train.std)
    x_train, y_train = extract_features(model, variables, train, preprocess=preprocess)
    x_test, y_test = extract_features(model, variables, test, preprocess=preprocess)
    probe = train_linear_probe(x_train, y_train, train.num_classes, l2=args.probe_l2)
    return probe.accuracy(x_test, y_test)


def run_arm(setting: str, arm: str, args, seed: int) -> float:
    """The arm's final test accuracy; a run that finished before (its final_metrics.json
    exists) is not run again."""
    workdir = os.path.join(args.workdir, setting, f"{arm}_seed{seed}")
    final = os.path.join(workdir, "final_metrics.json")
    if not os.path.exists(final):
        train_and_evaluate(arm_config(setting, arm, args, seed), workdir, log=lambda message: None)
    with open(final) as f:
        return json.load(f)["accuracy"]


def table(results: dict, settings: list[str], arms: list[str], seeds: list[int]) -> str:
    lines = ["| method | " + " | ".join(SETTINGS[s][1] for s in settings) + " |",
             "| --- |" + " ---: |" * len(settings)]
    for arm in arms:
        cells = []
        for s in settings:
            acc = np.array(results[s][arm]["accuracy"]) * 100
            cells.append(f"{acc.mean():.2f} ± {acc.std():.2f}%")
        lines.append(f"| {DESCRIPTIONS[arm]} (`{arm}`) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Test accuracy, mean ± standard deviation over {len(seeds)} label draws "
                 f"(seeds {', '.join(map(str, seeds))}); per draw in results.json.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/transfer")
    parser.add_argument("--data_dir", default="", help="where MNIST is prepared (TFDS data_dir)")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--seeds", default="0,1,2,3,4", help="label draws (and initialization seeds)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--probe_l2", type=float, default=1e-2)
    args = parser.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    arms = [a for a in args.arms.split(",") if a]
    for given, valid, what in ((settings, SETTINGS, "setting"), (arms, DESCRIPTIONS, "arm")):
        unknown = sorted(set(given) - set(valid))
        if unknown:
            parser.error(f"unknown {what}(s) {unknown}; valid: {', '.join(valid)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.workdir, exist_ok=True)

    def log(message):
        print(message, flush=True)

    start = time.perf_counter()
    results = {}
    for setting in settings:
        pretrain(setting, args, log)
        results[setting] = {arm: {"accuracy": []} for arm in arms}
        for seed in seeds:
            for arm in arms:
                t0 = time.perf_counter()
                if arm == "probe":
                    accuracy = linear_probe(setting, args, seed)
                else:
                    accuracy = run_arm(setting, arm, args, seed)
                seconds = time.perf_counter() - t0
                results[setting][arm]["accuracy"].append(accuracy)
                log(f"{setting} seed {seed} {arm:12s} test accuracy {accuracy:.2%} ({seconds:.0f} s)")

    text = table(results, settings, arms, seeds)
    print("\n" + text)
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump({"args": vars(args), "results": results,
                   "wall_seconds": time.perf_counter() - start}, f, indent=2)
    log(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    import sys

    from cnn_jax.errors import run_main
    sys.exit(run_main(main))
