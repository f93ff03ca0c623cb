"""Steps/s of the one train step under parallel = none, pmap and mesh.

Run from the repository root:

    python benchmarks/data_parallel.py                 # CPU: 8 fake devices (XLA flag)
    python benchmarks/data_parallel.py --real_devices  # the machine's own devices (GPUs)

`none` runs on one device with the whole global batch; pmap and mesh split the same global
batch over all devices. On a CPU the 8 "devices" share the same cores, so this measures the
overhead of each mode (collectives, dispatch), not a speed-up.
"""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--real_devices", action="store_true")
parser.add_argument("--fake_devices", type=int, default=8)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--models", default="lenet5,resnet18_cifar")
args = parser.parse_args()
if not args.real_devices:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.fake_devices}"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from cnn_jax.models import get_model, model_options  # noqa: E402
from cnn_jax.train.parallel import DataParallel  # noqa: E402
from cnn_jax.train.step import create_train_state, train_step  # noqa: E402

CASES = {  # model: (options, input shape, global batch)
    "lenet5": ({}, (32, 32, 1), 256),
    "resnet18_cifar": ({"width": 16}, (32, 32, 3), 128),
}


def steps_per_second(model_name: str, mode: str) -> float:
    options, shape, batch_size = CASES[model_name]
    dp = DataParallel(mode)
    if dp.axis_name and "norm_axis_name" in model_options(model_name):
        options = {**options, "norm_axis_name": dp.axis_name}
    model = get_model(model_name, num_classes=10, **options)
    tx = optax.sgd(0.01, momentum=0.9)
    state = dp.put_state(create_train_state(model, tx, jax.random.key(0), shape))
    rng = np.random.default_rng(0)
    batch = dp.put_batch({"image": rng.normal(size=(batch_size, *shape)).astype(np.float32),
                          "label": rng.integers(0, 10, batch_size).astype(np.int32)})
    step = dp.train_step(train_step)
    for _ in range(2):  # compile and warm up
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return args.steps / (time.perf_counter() - start)


def main():
    devices = jax.devices()
    print(f"jax {jax.__version__}, {len(devices)} x {devices[0].device_kind} "
          f"({devices[0].platform}), {os.cpu_count()} CPU cores", flush=True)
    rows = []
    for name in args.models.split(","):
        rates = {}
        for mode in ("none", "pmap", "mesh"):
            rates[mode] = steps_per_second(name, mode)
            print(f"  {name} {mode}: {rates[mode]:.1f} steps/s", flush=True)
        rows.append((name, CASES[name][2], rates))
    print(f"\n| model | global batch | none (1 device) | pmap ({len(devices)}) | mesh ({len(devices)}) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, bs, r in rows:
        print(f"| {name} | {bs} | {r['none']:.1f} | {r['pmap']:.1f} | {r['mesh']:.1f} |")


if __name__ == "__main__":
    main()
