"""The train state and the pure train and eval steps.

    state = create_train_state(model, tx, jax.random.key(0), input_shape=(32, 32, 1))
    step = jax.jit(train_step, donate_argnums=0,
                   compiler_options=cnn_jax.ops.compiler_options())  # faster on CPU
    state, metrics = step(state, {"image": images, "label": labels})

`train_step(state, batch) -> (state, metrics)` has no side effects: its randomness (dropout)
comes from `fold_in(state.rng, state.step)`, so the same state and batch give the same result.
BatchNorm uses batch statistics and updates its running averages in training, and uses the
running averages in evaluation.

An exponential moving average (EMA) of the variables (params and BatchNorm statistics) is kept
in `state.ema` once `with_ema(state)` starts it, and updated by `train_step(...,
ema_decay=0.999)`; `ema_view(state)` is the state with the averaged variables, to evaluate.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from flax.training import train_state

from cnn_jax.tasks import classification
from cnn_jax.tasks.classification import cross_entropy  # noqa: F401  (re-exported)


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state, apply_fn, tx) plus the BatchNorm
    statistics (an empty dict for models without BatchNorm), a PRNG key, the (H, W, C) input
    shape the parameters were made for, and the EMA of the variables (None: none kept)."""
    batch_stats: Any = struct.field(default_factory=dict)
    rng: jax.Array | None = None
    ema: Any = None  # {'params': ..., 'batch_stats': ...}, see with_ema
    input_shape: tuple[int, ...] = struct.field(pytree_node=False, default=())


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       input_shape: tuple[int, ...]) -> TrainState:
    """Initializes the model for (H, W, C) inputs. Shapes are checked with `jax.eval_shape`
    first, so an input the model cannot take fails before anything is allocated."""
    init_rng, state_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    init = jax.jit(lambda key, x: model.init(key, x, train=False))
    jax.eval_shape(init, init_rng, dummy)
    variables = init(init_rng, dummy)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                              batch_stats=variables.get("batch_stats", {}), rng=state_rng,
                              input_shape=tuple(input_shape))
    # An int32 array, not Python's 0: the step's type never changes, so nothing recompiles.
    return state.replace(step=jnp.zeros((), jnp.int32))


def with_ema(state: TrainState) -> TrainState:
    """`state` with its EMA started: copies of its params and BatchNorm statistics (copies, so
    that donating the state never donates one buffer twice)."""
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731
    return state.replace(ema={"params": copy(state.params), "batch_stats": copy(state.batch_stats)})


def ema_view(state: TrainState) -> TrainState:
    """`state` with the averaged variables in place of the raw ones (to evaluate them)."""
    return state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])


def ema_decay_at(step, decay: float, warmup: bool = True):
    """The decay of the update made by optimizer step `step` (1 for the first). With
    `warmup`, min(decay, (1 + step) / (10 + step)), TensorFlow's ExponentialMovingAverage
    `num_updates` rule: 2/11 at the first step, so a short run's average is not stuck near the
    initial weights."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1 + step) / (10 + step))


def train_step(state: TrainState, batch: dict, *, label_smoothing: float = 0.0,
               axis_name: str | None = None, accum_steps: int = 1,
               loss_fn: Callable | None = None, metrics_fn: Callable | None = None,
               ema_decay: float = 0.0, ema_warmup: bool = True
               ) -> tuple[TrainState, dict]:
    """One optimizer step on `batch` ({'image': (N,H,W,C), plus the task's targets}). Pure;
    jit it.

    `loss_fn(logits, batch) -> scalar` and `metrics_fn(logits, batch) -> {'accuracy': ...}`
    are the task's (`cnn_jax.tasks`, options bound with functools.partial); by default
    classification's, with `label_smoothing`.

    `axis_name`: the step runs under `jax.pmap` over that axis, each device on its share of
    the batch; gradients and metrics are averaged over it (BatchNorm statistics too, when the
    model was made with `norm_axis_name` equal to it). Under `jax.jit` over a device mesh the
    batch is one global array and no axis is named: the same step, unchanged.
    `accum_steps`: the batch is split into that many micro-batches, run one after the other
    (BatchNorm statistics update after each), and their gradients averaged into one update:
    the update of the whole batch in the memory of a micro-batch.
    `ema_decay`, `ema_warmup`: when `state.ema` is kept (`with_ema`), after the update
    `ema = d * ema + (1 - d) * new` for params and BatchNorm statistics, with d
    `ema_decay_at(state.step, ...)` of the step just taken (1 at the first).
    """
    if loss_fn is None:
        loss_fn = functools.partial(classification.loss, label_smoothing=label_smoothing)
    metrics_fn = metrics_fn or classification.train_metrics
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:  # each device its own dropout masks
        dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))

    def objective(params, batch_stats, micro_batch, rng):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": batch_stats}, micro_batch["image"], train=True,
            rngs={"dropout": rng}, mutable=["batch_stats"])
        return loss_fn(logits, micro_batch), (logits, updates.get("batch_stats", {}))

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    if accum_steps == 1:
        (loss, (logits, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch,
                                                       dropout_rng)
    else:
        micro = _split_micro_batches(batch, accum_steps)

        def accumulate(carry, xs):
            grads_sum, batch_stats = carry
            micro_batch, i = xs
            (loss, (logits, batch_stats)), grads = grad_fn(
                state.params, batch_stats, micro_batch, jax.random.fold_in(dropout_rng, i))
            return (jax.tree.map(jnp.add, grads_sum, grads), batch_stats), (loss, logits)

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, batch_stats), (losses, logits) = jax.lax.scan(
            accumulate, (zeros, state.batch_stats), (micro, jnp.arange(accum_steps)))
        grads = jax.tree.map(lambda g: g / accum_steps, grads)
        loss = jnp.mean(losses)
        merge = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  (micro-batches -> batch)
        logits, batch = merge(logits), jax.tree.map(merge, micro)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if state.ema is not None:
        d = ema_decay_at(state.step, ema_decay, ema_warmup)
        new = {"params": state.params, "batch_stats": state.batch_stats}
        state = state.replace(ema=jax.tree.map(
            lambda e, x: (d * e + (1 - d) * x).astype(e.dtype), state.ema, new))
    metrics = {
        "loss": loss,
        **metrics_fn(logits, batch),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(state.params),  # non-finite if the update overflowed
    }
    if axis_name is not None:
        metrics = jax.lax.pmean(metrics, axis_name)
    return state, metrics


def _split_micro_batches(batch: dict, accum_steps: int) -> dict:
    size = batch["image"].shape[0]
    if size % accum_steps:
        raise ValueError(f"A batch of {size} examples cannot be split into {accum_steps} "
                         f"equal micro-batches (accum_steps); make it a multiple of {accum_steps}.")
    return jax.tree.map(lambda x: x.reshape(accum_steps, size // accum_steps, *x.shape[1:]), batch)


def eval_step(state: TrainState, batch: dict, *, top_k: tuple[int, ...] = (5,),
              axis_name: str | None = None, counts_fn: Callable | None = None) -> dict:
    """Additive evaluation counts for `batch`; examples with `batch['mask'] == 0` (padding)
    count for nothing. Sum them with `metrics.add_counts`, then the task's `summarize`. Under
    `jax.pmap` over `axis_name` the counts are summed over the devices. `counts_fn(logits,
    batch)` is the task's (default: classification's, with `top_k`)."""
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                            batch["image"], train=False)
    counts_fn = counts_fn or functools.partial(classification.eval_counts, top_k=top_k)
    counts = counts_fn(logits, batch)
    return counts if axis_name is None else jax.lax.psum(counts, axis_name)
