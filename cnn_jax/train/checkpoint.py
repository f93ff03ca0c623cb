"""Checkpoints of a training run, with orbax-checkpoint, in `WORKDIR/checkpoints/<step>/`.

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3, best_metric="test_accuracy")
    ckpt.save(step, state_tree, meta, metrics={"test_accuracy": 0.98})   # metrics: None mid-epoch
    restored = ckpt.restore_latest(target_tree)    # None when there is nothing to resume
    variables, config = restore_variables(workdir)  # params (+ batch_stats) of a finished run
    ema_variables, _ = restore_variables(workdir, ema=True)  # their EMA (config.ema.decay > 0)

A checkpoint holds the train state as a tree of NumPy arrays (params, batch statistics,
optimizer state, step, PRNG key data, and the EMA of the variables when the run keeps one) and
a JSON `meta` item (the config, the data position,
the epoch's running train sums, the history so far, and a SHA-256 of the state's bytes and of
the rest of the meta item: everything a resume reads).

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
crash mid-save never leaves a directory that looks like a checkpoint. Restoring checks the
checksum too: a checkpoint whose files were damaged later is skipped, with a warning, for the
one before it; if none is good the restore fails rather than start from scratch.

Kept: the `keep` latest checkpoints, plus the best one by `best_metric` among those saved with
metrics (the ends of epochs).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected."""


def checkpoint_checksum(state: Any, meta: dict) -> str:
    """SHA-256 over the state's arrays and the meta item (as JSON, which it is saved as)."""
    return hashlib.sha256((tree_checksum(state) + json.dumps(meta, sort_keys=True)).encode()
                          ).hexdigest()


def tree_checksum(tree: Any) -> str:
    """SHA-256 over the leaves' paths, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        leaf = np.ascontiguousarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, best_metric: str = "",
                 best_mode: str = "max", read_only: bool = False):
        if keep < 1:
            raise ValueError(f"config.checkpoint.keep must be at least 1, got {keep}.")
        if best_mode not in ("max", "min"):
            raise ValueError(f"config.checkpoint.best_mode must be 'max' or 'min', got "
                             f"{best_mode!r}.")
        self.directory = os.path.abspath(directory)
        keepers = [policies.LatestN(n=keep)]
        best_fn = (lambda metrics: metrics[best_metric]) if best_metric else None
        if best_metric:
            keepers.append(policies.BestN(get_metric_fn=best_fn, n=1, reverse=best_mode == "min",
                                          keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keepers),
            best_fn=best_fn, best_mode=best_mode,
            cleanup_tmp_directories=not read_only, read_only=read_only, create=not read_only)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
        """Saves in the background; the arrays must not change afterwards (pass host copies)."""
        meta = {**meta, "step": int(step), "variables_sha256": tree_checksum(_variables(state))}
        meta["sha256"] = checkpoint_checksum(state, meta)
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)),
                           metrics=metrics, force=True)

    def restore(self, step: int, target: Any) -> tuple[Any, dict]:
        """The state (shaped like `target`) and meta saved at `step`; raises if they are damaged."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        state, meta = restored["state"], dict(restored["meta"])
        saved = meta.pop("sha256", None)
        if saved is None:  # saved before the checksum covered the meta item too
            ok = tree_checksum(state) == meta.pop("checksum", None)
        else:
            ok = checkpoint_checksum(state, meta) == saved
        if not ok:
            raise CheckpointError(f"checkpoint {step} does not match its checksum")
        return state, meta

    def restore_latest(self, target: Any) -> tuple[Any, dict] | None:
        """The newest good checkpoint, falling back past damaged ones with a warning; None if
        the directory holds no checkpoint; CheckpointError if it holds only damaged ones."""
        steps, damaged = self.steps(), []
        for step in reversed(steps):
            try:
                restored = self.restore(step, target)
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                warnings.warn(f"Checkpoint {os.path.join(self.directory, str(step))} is "
                              f"damaged ({type(e).__name__}: {str(e)[:300]}); trying the one "
                              "before it.", stacklevel=2)
                damaged.append(step)
                continue
            self._set_aside(damaged)
            return restored
        if steps:
            raise CheckpointError(
                f"None of the checkpoints {steps} in {self.directory} could be restored (see the "
                "warnings above). Move the directory away to start over, or pass "
                "--config.resume=False.")
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged checkpoints to `<directory>.damaged/` (for a look; training will save
        those steps anew)."""
        if steps and jax.process_index() == 0:
            os.makedirs(self.directory + ".damaged", exist_ok=True)
            for step in steps:
                os.replace(os.path.join(self.directory, str(step)),
                           os.path.join(self.directory + ".damaged", f"{step}.{time.time():.0f}"))
            warnings.warn(f"Moved the damaged checkpoints {steps} to {self.directory}.damaged/.",
                          stacklevel=3)
        if steps:
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("cnn_jax: damaged checkpoints set aside")
            self._manager.reload()

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def wait(self) -> None:
        """Blocks until background saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def restore_variables(workdir: str, step: int | None = None, *, best: bool = False,
                      ema: bool = False) -> tuple[dict, dict]:
    """The model variables ({'params', and 'batch_stats' if any}) and the config (a dict) of a
    run in `workdir`: its latest checkpoint, the one at `step`, or with `best=True` the best by
    the run's `config.checkpoint.best_metric`; with `ema=True` the exponential moving average
    of the variables (`config.ema`) instead of the raw ones. Needs no model: the arrays come
    back as saved."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir} holds no checkpoints ({directory} does not exist); "
                                "train with `python -m experiments.train --workdir "
                                f"{workdir} ...` first.")
    options = _read_json(os.path.join(workdir, "config.json")).get("checkpoint", {}) if best else {}
    ckpt = Checkpointer(directory, read_only=True, best_metric=options.get("best_metric", ""),
                        best_mode=options.get("best_mode", "max"))
    try:
        steps = ckpt.steps()
        if not steps:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint.")
        if best:
            step = ckpt.best_step()
        step = steps[-1] if step is None else step
        if step not in steps:
            raise ValueError(f"{directory} has no checkpoint at step {step}; it has {steps}.")
        restored = ckpt._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    finally:
        ckpt.close()
    state, meta = restored["state"], dict(restored["meta"])
    # Restored without a target the optimizer state's containers differ from the saved ones, so
    # the whole-state checksum cannot be recomputed here; the variables' own one can.
    saved = meta.get("variables_sha256")
    if saved is not None and tree_checksum(_variables(state)) != saved:
        raise CheckpointError(f"Checkpoint {step} in {directory} does not match its checksum: "
                              f"it is damaged. Steps there: {steps}.")
    if ema:
        if not state.get("ema"):
            raise ValueError(f"Checkpoint {step} in {directory} holds no moving average of the "
                             "weights: the run kept none (config.ema.decay=0). Use its raw "
                             "weights (no --ema), or train with --config.ema.decay=0.999.")
        state = state["ema"]
    variables = {"params": state["params"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    return variables, meta["config"]


def _variables(state: Any) -> dict:
    """The model variables of a saved state, as a plain dict (empty BatchNorm statistics
    included or not, the same either way), with their EMA's when the state has one (so the
    checksum of a state without one is what it always was)."""
    variables = {"params": state.get("params") or {}, "batch_stats": state.get("batch_stats") or {}}
    if state.get("ema"):
        variables["ema"] = _variables(state["ema"])
    return variables


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def state_tree(state) -> dict:
    """What a checkpoint holds of a `TrainState` (one copy, on the host): its arrays, with the
    PRNG key as raw key data, and its EMA's only when it keeps one (so that checkpoints of
    runs without one are as they always were)."""
    tree = {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state, "rng": jax.random.key_data(state.rng)}
    if state.ema is not None:
        tree["ema"] = state.ema
    return jax.device_get(tree)


def with_tree(state, tree: dict):
    """`state` with the arrays of a checkpoint's `tree` (from `state_tree`)."""
    return state.replace(step=tree["step"], params=tree["params"],
                         batch_stats=tree["batch_stats"], opt_state=tree["opt_state"],
                         rng=jax.random.wrap_key_data(tree["rng"],
                                                      impl=jax.random.key_impl(state.rng)),
                         ema=tree.get("ema", state.ema))


def save_variables(workdir: str, variables: dict, config: Any = None, step: int = 0) -> None:
    """Saves model `variables` (and the run's `config`, a dict or ConfigDict) as a checkpoint
    of `workdir` that `restore_variables` reads: for weights made outside the training loop."""
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    os.makedirs(workdir, exist_ok=True)
    if config:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        ckpt.save(step, jax.device_get({"params": variables["params"],
                                        "batch_stats": variables.get("batch_stats", {})}),
                  {"config": config})
        ckpt.wait()
    finally:
        ckpt.close()
