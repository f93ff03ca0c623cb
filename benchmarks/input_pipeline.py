"""Input-pipeline throughput against the train step's own consumption rate.

Run from the repository root (the script puts the root on sys.path, for `experiments.configs`):

    python benchmarks/input_pipeline.py --mnist_data_dir /tmp/tfds_mnist --steps 10 --batches 50

Per case, in images/s:
  pipeline     the host iterator alone (`train_iterator`, grain), read in the calling thread
               (0 threads) and by 2 threads (`config.input_threads`' default);
  augment      the jitted transforms alone (`make_preprocess`) on device-resident batches;
  train step   the train step from `make_steps`, jitted, (transforms fused in) on one batch
               already on the device: what the step can consume;
  end-to-end   the same step fed by the 2-thread iterator;
  ratio        pipeline (2 threads) / train step: above 1 the pipeline is not the bottleneck.
On a CPU-only machine the "device" is the same cores the pipeline threads run on, so the
end-to-end column, not the ratio alone, says what the pipeline costs.

Cases: mnist (LeNet-5, "pad(2)|normalize", batch 64, in memory), mnist_lazy (the same, each
example decoded from its PNG per read), cifar (a CIFAR-sized mock set, "random_crop(padding=4)|
hflip|normalize", ResNet-18 with the CIFAR stem, batch 128), imagenette (optional: a mock
Imagenette at 144 px, "random_resized_crop(128)|hflip|normalize", ResNet-18, batch 128).
Without --mnist_data_dir MNIST is mocked too. Mock examples are random arrays made on read:
no PNG/JPEG decoding. ResNet widths default to 16 (the real ResNet-18 is 64) so that a case
fits in about a minute on 2 CPU cores; a smaller model only makes the pipeline look worse.
"""

import argparse
import contextlib
import itertools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import logging  # noqa: E402

from cnn_jax.data import ArraySource, get_dataset, steps_per_epoch, train_iterator  # noqa: E402
from cnn_jax.data.transforms import make_preprocess  # noqa: E402
from cnn_jax.models import get_model  # noqa: E402
from cnn_jax.train.loop import make_steps, model_input_shape  # noqa: E402
from cnn_jax.train.optim import make_optimizer, make_schedule  # noqa: E402
from cnn_jax.train.step import create_train_state  # noqa: E402
from experiments.configs import lenet5_mnist, resnet18_cifar10, resnet18_imagenette  # noqa: E402

THREADS = (0, 2)
CASES = {  # name: (config module, dataset options, model options)
    "mnist": (lenet5_mnist, {}, {}),
    "mnist_lazy": (lenet5_mnist, {"in_memory": False}, {}),
    "cifar": (resnet18_cifar10, {}, {"width": "cifar_width"}),
    "imagenette": (resnet18_imagenette, {"image_size": 144}, {"width": "imagenet_width"}),
}


def log(msg):
    print(msg, flush=True)


def timed(step, n, warmup):
    """Seconds for n calls of step() after `warmup` calls, async dispatch drained."""
    for _ in range(warmup):
        out = step()
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(n):
        out = step()
    jax.block_until_ready(out)
    return time.perf_counter() - start


def run_case(name, args):
    module, ds_options, model_options = CASES[name]
    config = module.get_config()
    real = name.startswith("mnist") and args.mnist_data_dir
    if real:
        ds_options = {**ds_options, "data_dir": args.mnist_data_dir}
    examples = contextlib.nullcontext() if real else tfds.testing.mock_data(args.mock_examples)
    with examples:
        start = time.perf_counter()
        ds = get_dataset(config.dataset.name, "train", **ds_options)
        kind = "in memory" if isinstance(ds.source, ArraySource) else "lazy"
        row = {"case": name, "data": f"{'real' if real else 'mock'}, {kind}"}
        log(f"[{name}] {len(ds)} examples {ds.image_shape}, "
            f"loaded in {time.perf_counter() - start:.1f}s")
        bs, spe = config.batch_size, steps_per_epoch(ds, config.batch_size)
        epochs = -(-(args.batches + args.steps + 10) // spe) + 1

        def batches(threads):
            return train_iterator(ds, bs, seed=0, num_epochs=epochs, num_threads=threads)

        for threads in THREADS:  # 1. the host pipeline alone
            it, col = batches(threads), f"pipeline {threads} thr"
            row[col] = args.batches * bs / timed(lambda: next(it), args.batches, 3)
            log(f"[{name}] pipeline, {threads} threads: {row[col]:,.0f} img/s")
        it = batches(0)
        device_batches = [jax.device_put(next(it)) for _ in range(4)]

        stats = dict(num_classes=ds.num_classes, mean=ds.mean, std=ds.std)
        preprocess = make_preprocess(config.train_transforms, **stats)
        key, count = jax.random.key(0), itertools.count()  # 2. the transforms alone, on device
        augment = jax.jit(lambda j, b: preprocess(jax.random.fold_in(key, j), b))

        def augment_step():
            j = next(count)
            return augment(j, device_batches[j % len(device_batches)])

        row["augment"] = args.batches * bs / timed(augment_step, args.batches, 2)
        log(f"[{name}] augmentation on device: {row['augment']:,.0f} img/s")

        options = {k: getattr(args, v) for k, v in model_options.items()}
        model = get_model(config.model.name, num_classes=ds.num_classes, **options)
        row["model"] = config.model.name + "".join(f" {k}={v}" for k, v in options.items())
        tx = make_optimizer(config.optimizer, make_schedule(
            config.schedule, config.optimizer.learning_rate, spe * config.num_epochs, spe))
        shape = model_input_shape(preprocess, ds)
        state = [create_train_state(model, tx, jax.random.key(0), shape)]
        train_fn = jax.jit(make_steps(config, preprocess, preprocess)[0], donate_argnums=0)

        def step(batch):
            state[0], metrics = train_fn(state[0], batch)
            return metrics

        # 3. the step on a batch already on the device, then 4. fed by the pipeline
        row["train step"] = args.steps * bs / timed(lambda: step(device_batches[0]), args.steps, 2)
        log(f"[{name}] train step, in-memory batch: {row['train step']:,.0f} img/s")
        it = batches(2)
        row["end-to-end"] = args.steps * bs / timed(lambda: step(next(it)), args.steps, 2)
        log(f"[{name}] train step fed by the pipeline: {row['end-to-end']:,.0f} img/s")
    row["pipeline / step"] = row["pipeline 2 thr"] / row["train step"]
    row["seconds"] = time.perf_counter() - start
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="mnist,mnist_lazy,cifar",
                        help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--steps", type=int, default=10, help="timed train steps per case")
    parser.add_argument("--batches", type=int, default=50, help="timed pipeline batches per case")
    parser.add_argument("--mnist_data_dir", default="", help="TFDS data_dir with mnist prepared")
    parser.add_argument("--mock_examples", type=int, default=2048)
    parser.add_argument("--cifar_width", type=int, default=16, help="ResNet-18 width (real: 64)")
    parser.add_argument("--imagenet_width", type=int, default=16)
    args = parser.parse_args()
    logging.set_verbosity(logging.ERROR)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    log(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{cores} CPU cores, load average {os.getloadavg()[0]:.1f}")
    if not args.mnist_data_dir and any(c.startswith("mnist") for c in cases):
        log("no --mnist_data_dir: MNIST is mocked (tfds.testing.mock_data), no PNG decoding")
    rows = [run_case(c, args) for c in cases]
    cols = ["case", "data", "model", *(f"pipeline {t} thr" for t in THREADS), "augment",
            "train step", "end-to-end", "pipeline / step", "seconds"]
    fmt = lambda v: v if isinstance(v, str) else f"{v:.1f}" if v < 100 else f"{v:,.0f}"
    log("\nimages/s (ratio > 1: the pipeline is not the bottleneck)\n")
    log("| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
    for row in rows:
        log("| " + " | ".join(fmt(row[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
