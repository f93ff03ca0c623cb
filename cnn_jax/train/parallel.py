"""Data parallelism: the one train step, wrapped for one device, `jax.pmap`, or `jax.jit` over a
device mesh (`config.parallel = "none" | "pmap" | "mesh"`), on one host or several.

    dp = DataParallel("mesh")
    state = dp.put_state(state)
    step = dp.train_step(train_fn)      # train_fn(state, batch, axis_name=None) -> (state, metrics)
    state, metrics = step(state, dp.put_batch(local_batch))

- none: one device; the batch as it is.
- pmap: every local device holds a copy of the state (a leading device axis); the process's
  batch is split over its devices; the step is told the axis name, so gradients, metrics and
  BatchNorm statistics are averaged over all devices of all processes.
- mesh: a 1-D mesh `data` over all devices; the state is replicated, the batch is one global
  array sharded over `data` (each process contributes its own rows); XLA inserts the
  collectives. The step runs unchanged, BatchNorm sees the global batch.

`batch` here is always a process's share of the global batch: `global_batch // process_count`.
`none` and `mesh` compile with `ops.compiler_options()` (faster CPU kernels); `jax.pmap` takes
no compiler options.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cnn_jax import ops
from cnn_jax.data.pipeline import split_for_devices

MODES = ("none", "pmap", "mesh")
AXIS = "batch"  # pmap's device axis name (BatchNorm's `norm_axis_name` must match)


def check_batch_sizes(global_batch: int, devices: int | None = None, *,
                      what: str = "config.batch_size") -> dict:
    """Per-process and per-device sizes of `global_batch` over `devices` (default: all), or a
    clear error."""
    devices, processes = devices or jax.device_count(), jax.process_count()
    if global_batch % devices:
        raise ValueError(f"{what}={global_batch} must be divisible by the {devices} devices "
                         f"({processes} process(es)) to split evenly; try "
                         f"{max(devices, global_batch // devices * devices)}.")
    return {"global": global_batch, "per_process": global_batch // processes,
            "per_device": global_batch // devices, "devices": devices, "processes": processes}


class DataParallel:
    def __init__(self, mode: str):
        if mode not in MODES:
            raise ValueError(f"Unknown parallel mode {mode!r}. Valid choices: {', '.join(MODES)}.")
        self.mode = mode
        if mode == "none" and jax.process_count() > 1:
            raise ValueError("parallel='none' runs on one device of one process; with "
                             f"{jax.process_count()} processes use 'pmap' or 'mesh'.")
        if mode == "mesh":
            self.mesh = jax.make_mesh((jax.device_count(),), ("data",),
                                      axis_types=(jax.sharding.AxisType.Auto,))
            self.replicated = NamedSharding(self.mesh, P())
            self.sharded = NamedSharding(self.mesh, P("data"))

    @property
    def num_devices(self) -> int:
        return 1 if self.mode == "none" else jax.device_count()

    @property
    def axis_name(self) -> str | None:
        """What the model's BatchNorm must average over (`norm_axis_name`)."""
        return AXIS if self.mode == "pmap" else None

    def put_state(self, state):
        if self.mode == "pmap":
            n = jax.local_device_count()
            return jax.tree.map(lambda x: jax.numpy.broadcast_to(x, (n, *x.shape)), state)
        if self.mode == "mesh":
            return jax.tree.map(self._replicate, state)
        return state

    def _replicate(self, x):
        """One value, the same on every process, as a global replicated array."""
        if jax.process_count() == 1:
            return jax.device_put(x, self.replicated)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = self._replicate(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(self.replicated, np.asarray(x))

    def get_state(self, state):
        """The state as one copy, on the host's default device (for saving, evaluation in
        another mode, inspection)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x[0], state)
        return state

    def put_batch(self, batch: dict) -> dict:
        if self.mode == "pmap":
            return split_for_devices({k: np.asarray(v) for k, v in batch.items()},
                                     jax.local_device_count())
        if self.mode == "mesh":
            return {k: jax.make_array_from_process_local_data(self.sharded, np.asarray(v))
                    for k, v in batch.items()}
        return batch

    def train_step(self, train_fn: Callable[..., tuple[Any, dict]]) -> Callable:
        """`train_fn(state, batch, axis_name=...)` compiled for this mode, state donated."""
        if self.mode == "pmap":
            return jax.pmap(functools.partial(train_fn, axis_name=AXIS), axis_name=AXIS,
                            donate_argnums=0)
        if self.mode == "mesh":
            return jax.jit(functools.partial(train_fn, axis_name=None), donate_argnums=0,
                           in_shardings=(self.replicated, self.sharded),
                           out_shardings=(self.replicated, self.replicated),
                           compiler_options=ops.compiler_options())
        return jax.jit(functools.partial(train_fn, axis_name=None), donate_argnums=0,
                       compiler_options=ops.compiler_options())

    def eval_step(self, eval_fn: Callable[..., dict]) -> Callable:
        """`eval_fn(state, batch, axis_name=...)` -> counts summed over the whole batch."""
        if self.mode == "pmap":
            return jax.pmap(functools.partial(eval_fn, axis_name=AXIS), axis_name=AXIS)
        if self.mode == "mesh":
            return jax.jit(functools.partial(eval_fn, axis_name=None),
                           in_shardings=(self.replicated, self.sharded),
                           out_shardings=self.replicated, compiler_options=ops.compiler_options())
        return jax.jit(functools.partial(eval_fn, axis_name=None),
                       compiler_options=ops.compiler_options())

    def fetch(self, tree):
        """Replicated step outputs (metrics, counts) as NumPy, readable on every process."""
        if self.mode == "pmap":
            tree = jax.tree.map(lambda x: x[0], tree)
        if self.mode == "mesh":
            return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
        return jax.device_get(tree)



def initialize_distributed(cfg) -> None:
    """`jax.distributed.initialize` from `config.distributed`; a no-op for one process. Call it
    before anything else touches JAX's devices."""
    if cfg.auto:
        jax.distributed.initialize()  # SLURM, Cloud TPU, Kubernetes, MPI: detected
    elif cfg.coordinator_address:
        if not 0 <= cfg.process_id < cfg.num_processes:
            raise ValueError(f"config.distributed.process_id must lie in "
                             f"[0, {cfg.num_processes}), got {cfg.process_id}.")
        jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
