"""Trains a few steps in one data-parallel mode and saves the result, for tests/test_parallel.py.

    python tests/helpers/parallel_run.py MODE MODEL OUT.npz [--devices 8] [--accum 1]
        [--process_id I --num_processes N --coordinator 127.0.0.1:PORT]

Every run sees the same global batches (made from a fixed seed), so runs in different modes,
device counts and process counts must end with the same parameters (and the same moving
average of them: the state keeps one, `with_ema`).
"""

import argparse
import functools
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("mode")
parser.add_argument("model")
parser.add_argument("out")
parser.add_argument("--devices", type=int, default=8)
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--global_batch", type=int, default=32)
parser.add_argument("--process_id", type=int, default=0)
parser.add_argument("--num_processes", type=int, default=1)
parser.add_argument("--coordinator", default="")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

if args.num_processes > 1:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               initialization_timeout=60)

from cnn_jax.models import get_model  # noqa: E402
from cnn_jax.train.parallel import DataParallel  # noqa: E402
from cnn_jax.train.step import create_train_state, eval_step, train_step, with_ema  # noqa: E402

dp = DataParallel(args.mode)
if args.model == "lenet5":
    model, shape = get_model("lenet5", num_classes=10), (32, 32, 1)
else:  # a small ResNet with BatchNorm
    model = get_model("resnet18_cifar", num_classes=10, width=4, norm_axis_name=dp.axis_name)
    shape = (12, 12, 3)
state = with_ema(create_train_state(model, optax.sgd(0.1, momentum=0.9), jax.random.key(0), shape))
rng = np.random.default_rng(0)
n, per = args.global_batch, args.global_batch // jax.process_count()
rows = slice(jax.process_index() * per, (jax.process_index() + 1) * per)

state = dp.put_state(state)
step = dp.train_step(functools.partial(train_step, ema_decay=0.9))
losses = []
for _ in range(args.steps):
    batch = {"image": rng.normal(size=(n, *shape)).astype(np.float32),
             "label": rng.integers(0, 10, n).astype(np.int32)}
    state, metrics = step(state, dp.put_batch({k: v[rows] for k, v in batch.items()}))
    losses.append(dp.fetch(metrics)["loss"])
eval_batch = {"image": rng.normal(size=(n, *shape)).astype(np.float32),
              "label": rng.integers(0, 10, n).astype(np.int32),
              "mask": (np.arange(n) < n - 3).astype(np.float32)}
counts = dp.fetch(dp.eval_step(eval_step)(state, dp.put_batch({k: v[rows] for k, v in eval_batch.items()})))
state = dp.get_state(state)
flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(
            x.addressable_data(0) if hasattr(x, "addressable_data") else x)
        for path, x in jax.tree_util.tree_leaves_with_path(
            {"params": state.params, "batch_stats": state.batch_stats, "ema": state.ema})}
if jax.process_index() == 0:
    np.savez(args.out, losses=np.array(losses), **{f"count/{k}": np.asarray(v) for k, v in counts.items()},
             **flat)
print("devices", jax.device_count(), "processes", jax.process_count(), "losses", losses)
