"""Optimizers and learning-rate schedules from a config, through optax.

Every optimizer is one chain:

    [clip by global norm] -> [L2 penalty] -> direction (sgd/adam/rmsprop) -> [decoupled decay] -> -lr

so decoupled decay (the AdamW/SGDW kind: p -= lr * wd * p) and coupled L2 (wd * p added to the
gradient, as PyTorch's `weight_decay=`) differ only in where `add_decayed_weights` sits. Only
kernels (arrays of rank >= 2) are decayed: biases and norm scales/offsets are not.

Config fields (`config.optimizer`): name, learning_rate, momentum, nesterov, b1, b2, eps,
rms_decay, weight_decay, weight_decay_type ('decoupled' | 'l2'), grad_clip_norm.
Config fields (`config.schedule`): name, warmup_epochs, boundaries (fractions of training),
decay_factor, end_factor, pct_start, div_factor, final_div_factor.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import optax

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "one_cycle")
WEIGHT_DECAY_TYPES = ("decoupled", "l2")


def _get(cfg: Mapping[str, Any], key: str, default: Any) -> Any:
    return cfg.get(key, default) if cfg is not None else default


def decay_mask(params: Any) -> Any:
    """True for kernels (rank >= 2), False for biases and norm parameters."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_schedule(cfg: Mapping[str, Any], base_lr: float, total_steps: int,
                  steps_per_epoch: int) -> optax.Schedule:
    """A schedule of `total_steps` steps peaking at `base_lr`; any schedule but one_cycle may
    start with `warmup_epochs` of linear warm-up from zero (cosine + warm-up is the usual
    'warmup_cosine')."""
    name = _get(cfg, "name", "constant")
    if name not in SCHEDULES:
        raise ValueError(f"Unknown schedule {name!r}. Valid choices: {', '.join(SCHEDULES)}.")
    if total_steps < 1:
        raise ValueError(f"A schedule needs at least one step, got total_steps={total_steps}.")
    if name == "one_cycle":
        if _get(cfg, "warmup_epochs", 0):
            raise ValueError("one_cycle has its own warm-up (schedule.pct_start); "
                             "set schedule.warmup_epochs=0.")
        return optax.cosine_onecycle_schedule(
            total_steps, base_lr, pct_start=_get(cfg, "pct_start", 0.3),
            div_factor=_get(cfg, "div_factor", 25.0),
            final_div_factor=_get(cfg, "final_div_factor", 1e4))
    warmup = int(round(_get(cfg, "warmup_epochs", 0) * steps_per_epoch))
    if not 0 <= warmup < total_steps:
        raise ValueError(f"warm-up of {warmup} steps must be shorter than training "
                         f"({total_steps} steps).")
    steps = total_steps - warmup
    if name == "constant":
        main = optax.constant_schedule(base_lr)
    elif name == "step":
        boundaries = _get(cfg, "boundaries", (0.5, 0.75))
        if not all(0 < b < 1 for b in boundaries):
            raise ValueError(f"schedule.boundaries are fractions of training in (0, 1), "
                             f"got {tuple(boundaries)}.")
        factor = _get(cfg, "decay_factor", 0.1)
        main = optax.piecewise_constant_schedule(
            base_lr, {int(b * steps): factor for b in boundaries})
    else:  # cosine
        main = optax.cosine_decay_schedule(base_lr, steps, alpha=_get(cfg, "end_factor", 0.0))
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


def make_optimizer(cfg: Mapping[str, Any], learning_rate: optax.ScalarOrSchedule | None = None
                   ) -> optax.GradientTransformation:
    """The optimizer of `cfg`. `learning_rate` (a number or a schedule, e.g. from
    `make_schedule`) defaults to the constant `cfg['learning_rate']`."""
    if learning_rate is None:
        learning_rate = _get(cfg, "learning_rate", None)
        if learning_rate is None:
            raise ValueError("No learning rate: set optimizer.learning_rate or pass a schedule.")
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"The learning rate must be positive, got {learning_rate!r}.")
    name = _get(cfg, "name", "sgd")
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}. Valid choices: {', '.join(OPTIMIZERS)}.")
    weight_decay = _get(cfg, "weight_decay", 0.0)
    decay_type = _get(cfg, "weight_decay_type", "decoupled")
    if decay_type not in WEIGHT_DECAY_TYPES:
        raise ValueError(f"Unknown weight_decay_type {decay_type!r}. "
                         f"Valid choices: {', '.join(WEIGHT_DECAY_TYPES)}.")
    if name == "adamw" and decay_type == "l2":
        raise ValueError("adamw is Adam with decoupled weight decay; for Adam with an L2 "
                         "penalty use optimizer.name='adam' with weight_decay_type='l2'.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    clip = _get(cfg, "grad_clip_norm", 0.0)

    if name == "sgd":
        momentum = _get(cfg, "momentum", 0.9)
        nesterov = _get(cfg, "nesterov", False)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs optimizer.momentum > 0.")
        direction = optax.trace(momentum, nesterov) if momentum > 0 else optax.identity()
    elif name in ("adam", "adamw"):
        direction = optax.scale_by_adam(_get(cfg, "b1", 0.9), _get(cfg, "b2", 0.999),
                                        _get(cfg, "eps", 1e-8))
    else:  # rmsprop, as PyTorch's RMSprop(alpha=rms_decay, eps, momentum)
        direction = optax.chain(
            optax.scale_by_rms(_get(cfg, "rms_decay", 0.99), _get(cfg, "eps", 1e-8),
                               eps_in_sqrt=False, bias_correction=False),
            optax.trace(_get(cfg, "momentum", 0.0)))

    decay = optax.add_decayed_weights(weight_decay, mask=decay_mask) if weight_decay else None
    chain = [
        optax.clip_by_global_norm(clip) if clip > 0 else None,
        decay if decay_type == "l2" else None,
        direction,
        decay if decay_type == "decoupled" else None,
        optax.scale_by_learning_rate(learning_rate),
    ]
    return optax.chain(*(t for t in chain if t is not None))
