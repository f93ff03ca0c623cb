"""Freezing and learning rates per part of the model, by parameter-name pattern.

    tx = make_transfer_optimizer(config.optimizer, schedule, freeze="backbone",
                                 unfreeze_after=500, lr_multipliers={"layer4": 0.1})
    apply_fn = freeze_batch_norm(model.apply, frozen_names)   # BatchNorm in inference mode there

The optimizer is one `optax.multi_transform` over groups of parameters:

    [zero frozen gradients] -> [clip by global norm] -> multi_transform({
        "frozen":         set_to_zero(),                        # no optimizer state at all
        "lr=m":           direction (sgd/adam/...) + decay, scaled by m,
        "lr=m,held<N":    the same, held at its initial state for the first N steps,
    }) -> scale by the schedule

so a frozen parameter gets an update of exactly zero (it stays bit-identical), is left out of
the gradient-clipping norm and of weight decay, and, when it is frozen for the whole run,
carries no optimizer state. A part frozen only until step N (`unfreeze_after=N`) keeps an
optimizer state that stays at its initial value until then (a fresh Adam or momentum starts at
step N), so the state's structure never changes mid-run: nothing recompiles at the switch and
checkpoints resume across it. The schedule's step counter is shared by every group, so a
multiplier scales the same schedule everywhere.

Patterns are those of `cnn_jax.transfer.loading` (regular expressions on names such as
`layer1_0/conv1/conv/kernel`, matching a whole name or a leading part ending at '/'), plus the
word `backbone`: every parameter the `head` patterns do not name.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from cnn_jax.train.optim import make_optimizer
from cnn_jax.transfer.loading import Patterns, matcher, parse_patterns

Multipliers = Union[str, Mapping[str, float], Sequence[tuple[str, float]], None]
FROZEN = "frozen"
BATCH_NORM_MODES = ("frozen_parts", "none", "all")


def name_matcher(patterns: Patterns, head: Patterns = ("head",)) -> Callable[[str], bool]:
    """Like `loading.matcher`, with `backbone` meaning every name `head` does not match."""
    patterns = parse_patterns(patterns)
    in_head = matcher(head)
    others = matcher([p for p in patterns if p != "backbone"])
    backbone = "backbone" in patterns
    return lambda name: others(name) or (backbone and not in_head(name))


def parse_multipliers(multipliers: Multipliers) -> list[tuple[str, float]]:
    """'pattern=m,pattern=m' (the config form), a {pattern: m} mapping or (pattern, m) pairs;
    the first pattern that names a parameter gives its multiplier (default 1)."""
    if not multipliers:
        return []
    if isinstance(multipliers, str):
        pairs = []
        for item in filter(None, (s.strip() for s in multipliers.split(","))):
            pattern, sep, value = item.rpartition("=")
            if not sep or not pattern:
                raise ValueError(f"Learning-rate multiplier {item!r} is not 'pattern=multiplier' "
                                 "(e.g. 'backbone=0.1,layer4.*=0.5').")
            try:
                pairs.append((pattern.strip(), float(value)))
            except ValueError:
                raise ValueError(f"Learning-rate multiplier {item!r}: {value!r} is not a "
                                 "number.") from None
    else:
        pairs = list(multipliers.items() if isinstance(multipliers, Mapping) else multipliers)
    for pattern, value in pairs:
        parse_patterns([pattern])
        if not value >= 0:
            raise ValueError(f"Learning-rate multiplier for {pattern!r} must be >= 0 (0 freezes), "
                             f"got {value}.")
    return [(p, float(v)) for p, v in pairs]


def _names(tree: Any) -> Any:
    """The tree with every leaf replaced by its '/'-joined path name."""
    def name(path, _):
        return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    return jax.tree_util.tree_map_with_path(name, tree)


def param_labels(params: Any, *, freeze: Patterns = (), head: Patterns = ("head",),
                 unfreeze_after: int = 0, lr_multipliers: Multipliers = ()) -> Any:
    """The group label of every parameter: 'frozen', 'lr=<m>' or 'lr=<m>,held<N>'."""
    is_frozen = name_matcher(freeze, head)
    multipliers = [(name_matcher([p], head), m) for p, m in parse_multipliers(lr_multipliers)]

    def label(name):
        m = next((m for match, m in multipliers if match(name)), 1.0)
        if m == 0 or (is_frozen(name) and not unfreeze_after):
            return FROZEN
        return f"lr={m:g}" + (f",held<{unfreeze_after}" if is_frozen(name) else "")

    return jax.tree.map(label, _names(params))


class HoldState(NamedTuple):
    count: jax.Array
    inner: Any


def hold_until(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """`inner`, but for its first `steps` updates the updates are zero and its state is left
    exactly as initialized (no moment decays, no step counted)."""
    def init(params):
        return HoldState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        def run(_):
            return inner.update(updates, state.inner, params)

        def hold(_):
            return jax.tree.map(jnp.zeros_like, updates), state.inner

        new_updates, new_inner = jax.lax.cond(state.count >= steps, run, hold, None)
        return new_updates, HoldState(optax.safe_increment(state.count), new_inner)

    return optax.GradientTransformation(init, update)


class ZeroFrozenState(NamedTuple):
    count: jax.Array


def zero_frozen(labels_fn: Callable[[Any], Any]) -> optax.GradientTransformation:
    """Zeroes the gradients of frozen and (until their step) held parameters: what comes next
    (the clipping norm) sees only what trains."""
    def init(params):
        del params
        return ZeroFrozenState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params

        def gate(label, g):
            if label == FROZEN:
                return jnp.zeros_like(g)
            if ",held<" in label:
                return jnp.where(state.count >= int(label.rpartition("<")[2]), g, 0)
            return g

        updates = jax.tree.map(gate, labels_fn(updates), updates)
        return updates, ZeroFrozenState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def make_transfer_optimizer(cfg: Mapping[str, Any], learning_rate: optax.ScalarOrSchedule, *,
                            freeze: Patterns = (), head: Patterns = ("head",),
                            unfreeze_after: int = 0, lr_multipliers: Multipliers = ()
                            ) -> optax.GradientTransformation:
    """The optimizer of `cfg` (`config.optimizer`, as `cnn_jax.train.optim.make_optimizer`)
    with the parameters named by `freeze` frozen (for the first `unfreeze_after` steps, or
    for the whole run when it is 0) and each parameter's learning rate multiplied by the first
    of `lr_multipliers` that names it. `learning_rate`: a number or a schedule."""
    if not isinstance(unfreeze_after, int) or unfreeze_after < 0:
        raise ValueError(f"unfreeze_after must be an int >= 0 (0: frozen for the whole run), "
                         f"got {unfreeze_after!r}.")
    parse_patterns(freeze), parse_patterns(head), parse_multipliers(lr_multipliers)

    def labels_fn(params):
        return param_labels(params, freeze=freeze, head=head, unfreeze_after=unfreeze_after,
                            lr_multipliers=lr_multipliers)

    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    group_cfg = {**cfg, "grad_clip_norm": 0.0}
    transforms = {FROZEN: optax.set_to_zero()}
    # Every label the patterns can produce; a group no parameter falls in holds no state.
    multipliers = {1.0} | {m for _, m in parse_multipliers(lr_multipliers) if m > 0}
    for m in multipliers:
        group = make_optimizer(group_cfg, learning_rate=m)  # constant m: a stateless scale
        transforms[f"lr={m:g}"] = group
        if unfreeze_after:
            transforms[f"lr={m:g},held<{unfreeze_after}"] = hold_until(group, unfreeze_after)
    clip = float(cfg.get("grad_clip_norm", 0.0) or 0.0)
    schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)
    chain = [
        zero_frozen(labels_fn) if clip > 0 else None,
        optax.clip_by_global_norm(clip) if clip > 0 else None,
        optax.multi_transform(transforms, labels_fn),
        optax.scale_by_schedule(schedule),
    ]
    return optax.chain(*(t for t in chain if t is not None))


def frozen_names(params: Any, *, freeze: Patterns = (), head: Patterns = ("head",),
                 lr_multipliers: Multipliers = ()) -> list[str]:
    """Names of the parameters `make_transfer_optimizer` freezes (at the start)."""
    labels = param_labels(params, freeze=freeze, head=head, unfreeze_after=1,
                          lr_multipliers=lr_multipliers)
    names = jax.tree.leaves(_names(params))
    return [n for n, label in zip(names, jax.tree.leaves(labels))
            if label == FROZEN or ",held<" in label]


def freeze_batch_norm(apply_fn: Callable, is_frozen: Callable[[str], bool]) -> Callable:
    """`apply_fn` (a model's `apply`) in which every BatchNorm whose scale or bias name
    `is_frozen` accepts runs in inference mode, also when called with `train=True`: it
    normalises with its running statistics and leaves them unchanged, so a frozen part
    computes the same function in training as in evaluation. Gradients still flow through
    its scale and bias (they train unless frozen too)."""
    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (context.method_name == "__call__" and isinstance(module, nn.BatchNorm)
                and not module.use_running_average and module.scope is not None
                and any(is_frozen("/".join((*module.path, leaf))) for leaf in ("scale", "bias"))):
            variables = {c: module.variables[c] for c in ("params", "batch_stats")}
            inference = module.clone(parent=None, use_running_average=True)
            return inference.apply(variables, *args, **kwargs)
        return next_fun(*args, **kwargs)

    def apply(*args, **kwargs):
        with nn.intercept_methods(interceptor):
            return apply_fn(*args, **kwargs)

    return apply
