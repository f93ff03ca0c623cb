"""A few segmentation train steps (tasks.segmentation's loss, metrics and counts bound into the
one train step) in one data-parallel mode; saves parameters, statistics and evaluation counts.

    python tests/helpers/seg_parallel_run.py MODE OUT.npz [--devices 8]
"""

import argparse
import functools
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("mode")
parser.add_argument("out")
parser.add_argument("--devices", type=int, default=8)
args = parser.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "helpers")]

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from seg_net import TinySegNet  # noqa: E402

from cnn_jax.tasks import segmentation  # noqa: E402
from cnn_jax.train.parallel import DataParallel  # noqa: E402
from cnn_jax.train.step import create_train_state, eval_step, train_step  # noqa: E402

dp = DataParallel(args.mode)
shape, classes, n = (8, 8, 3), 3, 16
state = create_train_state(TinySegNet(classes, norm_axis_name=dp.axis_name),
                           optax.sgd(0.1, momentum=0.9), jax.random.key(0), shape)
options = {"ignore_value": 255, "class_weights": (1.0, 2.0, 0.5), "kind": "cross_entropy+dice"}
train_fn = functools.partial(train_step, loss_fn=functools.partial(segmentation.loss, **options),
                             metrics_fn=functools.partial(segmentation.train_metrics, **options))
eval_fn = functools.partial(eval_step, counts_fn=functools.partial(segmentation.eval_counts,
                                                                   **options))
rng = np.random.default_rng(0)


def batch():
    labels = rng.integers(0, classes, (n, *shape[:2]))
    labels[rng.random(labels.shape) < 0.1] = 255
    return {"image": rng.normal(size=(n, *shape)).astype(np.float32),
            "label": labels.astype(np.int32)}


state = dp.put_state(state)
step = dp.train_step(train_fn)
losses = []
for _ in range(4):
    state, metrics = step(state, dp.put_batch(batch()))
    losses.append(dp.fetch(metrics)["loss"])
eval_batch = {**batch(), "mask": (np.arange(n) < n - 3).astype(np.float32)}
counts = dp.fetch(dp.eval_step(eval_fn)(state, dp.put_batch(eval_batch)))
state = dp.get_state(state)
flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
        for path, x in jax.tree_util.tree_leaves_with_path(
            {"params": state.params, "batch_stats": state.batch_stats})}
np.savez(args.out, losses=np.array(losses), **{f"count/{k}": np.asarray(v) for k, v in counts.items()},
         **flat)
