"""End-to-end training speed: the training loop of `python -m experiments.train` against its
own bare jitted step.

Run from the repository root:

    python benchmarks/train_loop.py                  # lenet5 and vgg11 cases, ~2 minutes
    python benchmarks/train_loop.py --smoke          # seconds: every code path, tiny sizes

For each case the experiment config is run through `train_and_evaluate` (what
`experiments.train` calls: the grain input pipeline, host-to-device copies, the metric syncs
every `log_every_steps`, the log files, a checkpoint at the end of the epoch) on an in-memory
mock dataset (`tfds.testing.mock_data`: random images, decoded once). Its speed is the
images/s it writes to `steps.jsonl`, the first interval (compilation) left out. The bare step
is the loop's own jitted step (`DataParallel("none").train_step`, the transforms fused in)
called on one batch already on the device, timed before and after the loop run. `loop / bare`
near 1 means the loop adds nothing; the issue's bar is 0.9.

Cases: lenet5 (config lenet5_mnist, 28x28 MNIST-sized images, batch 128: the smallest step, so
any per-step overhead shows most) and vgg11 (VGG-11 with the CIFAR head on CIFAR-10-sized
images, batch 128).
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import logging  # noqa: E402

from cnn_jax.data import get_dataset, steps_per_epoch, train_iterator  # noqa: E402
from cnn_jax.data.transforms import make_preprocess  # noqa: E402
from cnn_jax.models import get_model  # noqa: E402
from cnn_jax.train import train_and_evaluate  # noqa: E402
from cnn_jax.train.loop import make_steps, model_input_shape  # noqa: E402
from cnn_jax.train.optim import make_optimizer, make_schedule  # noqa: E402
from cnn_jax.train.parallel import DataParallel  # noqa: E402
from cnn_jax.train.step import create_train_state  # noqa: E402
from experiments.configs import lenet5_mnist, resnet18_cifar10  # noqa: E402


def lenet5_config():
    return lenet5_mnist.get_config()


def vgg11_config():
    config = resnet18_cifar10.get_config()  # CIFAR-10 data, transforms and optimizer
    config.model.name = "vgg11_cifar"
    return config


CASES = {"lenet5": lenet5_config, "vgg11": vgg11_config}


def log(msg):
    print(msg, flush=True)


def bare_step_rate(config, steps: int) -> float:
    """Images/s of the loop's own train step, jitted, on one batch already on the device."""
    ds = get_dataset(config.dataset.name, "train")
    stats = dict(num_classes=ds.num_classes, mean=ds.mean, std=ds.std)
    preprocess = make_preprocess(config.train_transforms, **stats)
    model = get_model(config.model.name, num_classes=ds.num_classes,
                      **{k: v for k, v in config.model.items() if k != "name"})
    spe = steps_per_epoch(ds, config.batch_size)
    tx = make_optimizer(config.optimizer, make_schedule(
        config.schedule, config.optimizer.learning_rate, spe * config.num_epochs, spe))
    state = create_train_state(model, tx, jax.random.key(0), model_input_shape(preprocess, ds))
    step = DataParallel("none").train_step(make_steps(config, preprocess, preprocess)[0])
    batch = jax.device_put(next(train_iterator(ds, config.batch_size, seed=0, num_epochs=1,
                                               num_threads=0)))
    for _ in range(2):
        state, metrics = step(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(state)
    return steps * config.batch_size / (time.perf_counter() - start)


def loop_rate(config, workdir: str) -> tuple[float, float]:
    """Images/s of the training loop in steady state (steps.jsonl, first interval left out),
    and the wall seconds of the whole run."""
    start = time.perf_counter()
    train_and_evaluate(config, workdir, log=lambda message: None)
    wall = time.perf_counter() - start
    with open(os.path.join(workdir, "steps.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steady = records[1:]
    if not steady:
        raise RuntimeError("The run logged fewer than two intervals; use more --steps.")
    steps = np.diff([r["step"] for r in records])
    seconds = steps / np.array([r["steps_per_second"] for r in steady])
    return float(steps.sum() * config.batch_size / seconds.sum()), wall


def run_case(name: str, args) -> dict:
    config = CASES[name]()
    config.batch_size = args.batch_size
    config.num_epochs = 1
    config.log_every_steps = args.log_every
    config.eval_batch_size = args.batch_size
    config.validation_fraction = 0.0  # train on all `steps` batches
    with tfds.testing.mock_data(num_examples=args.steps * args.batch_size):
        bare_before = bare_step_rate(config, args.bare_steps)
        with tempfile.TemporaryDirectory() as workdir:
            loop, wall = loop_rate(config, workdir)
        bare_after = bare_step_rate(config, args.bare_steps)
    bare = (bare_before + bare_after) / 2
    row = {"case": name, "model": config.model.name, "batch": config.batch_size,
           "steps": args.steps, "bare step img/s": bare, "loop img/s": loop,
           "loop / bare": loop / bare, "bare before/after": f"{bare_before:.0f}/{bare_after:.0f}",
           "run seconds": wall}
    log(f"[{name}] bare step {bare:,.0f} img/s (before {bare_before:,.0f}, after "
        f"{bare_after:,.0f}), loop {loop:,.0f} img/s: {loop / bare:.3f}")
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"from {', '.join(CASES)}")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=0,
                        help="loop steps (one epoch); default 800 for lenet5, 40 for vgg11")
    parser.add_argument("--bare_steps", type=int, default=0, help="default: --steps / 2")
    parser.add_argument("--log_every", type=int, default=0, help="default: --steps / 10")
    parser.add_argument("--out", default="", help="also write the rows as JSON here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the tests")
    args = parser.parse_args()
    logging.set_verbosity(logging.ERROR)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    if args.smoke:
        args.batch_size, args.steps = 8, 6
    log(f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    for name in cases:
        case_args = argparse.Namespace(**vars(args))
        case_args.steps = args.steps or {"lenet5": 800, "vgg11": 40}[name]
        case_args.bare_steps = args.bare_steps or max(2, case_args.steps // 2)
        case_args.log_every = args.log_every or max(1, case_args.steps // 10)
        rows.append(run_case(name, case_args))
    cols = list(rows[0])
    fmt = lambda v: (v if isinstance(v, str) else str(v) if isinstance(v, int)
                     else f"{v:.3f}" if v < 10 else f"{v:,.0f}")
    log("\n| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
    for row in rows:
        log("| " + " | ".join(fmt(row[c]) for c in cols) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
