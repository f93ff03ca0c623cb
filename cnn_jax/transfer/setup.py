"""`config.transfer` in the training loop: start from pretrained weights, freeze parts, scale
learning rates per part, freeze BatchNorm statistics.

    state = create_train_state(model, tx, key, input_shape)
    state = setup_transfer(config, state, schedule, log)   # the loop's one call; a no-op by default

Config fields (`cnn_jax.config.default_config`):

| field | meaning |
| --- | --- |
| `init_from` | '' (train from scratch), the workdir of a cnn_jax run, or a torchvision state-dict file (`.pth`, `.pt`, `.safetensors`) for `config.model.name` |
| `head` | patterns naming the classifier: re-initialized when loading (any number of classes), and what `backbone` excludes |
| `freeze` | patterns of parameters not trained, e.g. `backbone` |
| `unfreeze_after_steps` | 0: frozen for the whole run; N: the frozen parts train from step N on |
| `lr_multipliers` | 'pattern=m,...', e.g. `backbone=0.1` or `stem,layer1.*=0.1,layer4.*=0.5`; first match wins |
| `freeze_batch_norm` | `frozen_parts` (BatchNorm in the parts named by `freeze` runs in inference mode for the whole run), `none`, `all` |
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import optax

from cnn_jax.train.step import TrainState
from cnn_jax.transfer import freeze as freeze_lib
from cnn_jax.transfer.loading import load_pretrained
from cnn_jax.transfer.torchvision import (SAFETENSORS_EXTENSIONS, TORCH_EXTENSIONS,
                                          from_torchvision, load_state_dict)


def transfer_options(config) -> dict[str, Any]:
    """config.transfer as a dict with every field (defaults for configs written before it)."""
    defaults = {"init_from": "", "head": "head", "freeze": "", "unfreeze_after_steps": 0,
                "lr_multipliers": "", "freeze_batch_norm": "frozen_parts"}
    section = config.get("transfer") if hasattr(config, "get") else None
    given = section.to_dict() if hasattr(section, "to_dict") else dict(section or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"Unknown config.transfer key(s) {unknown}. Valid keys: "
                         f"{', '.join(defaults)}.")
    options = {**defaults, **given}
    if options["freeze_batch_norm"] not in freeze_lib.BATCH_NORM_MODES:
        raise ValueError(f"Unknown config.transfer.freeze_batch_norm "
                         f"{options['freeze_batch_norm']!r}. Valid choices: "
                         f"{', '.join(freeze_lib.BATCH_NORM_MODES)}.")
    steps = options["unfreeze_after_steps"]
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"config.transfer.unfreeze_after_steps must be an int >= 0, got {steps!r}.")
    if steps and not options["freeze"]:
        raise ValueError("config.transfer.unfreeze_after_steps is set but config.transfer.freeze "
                         "names nothing to unfreeze.")
    freeze_lib.name_matcher(options["freeze"], options["head"])
    freeze_lib.parse_multipliers(options["lr_multipliers"])
    return options


def load_init(init_from: str, model_name: str, variables: Mapping[str, Any], head
              ) -> tuple[dict[str, Any], Any]:
    """`variables` loaded from a run's workdir (`restore_variables`) or a torchvision file, the
    head re-initialized. Returns (variables, LoadReport)."""
    ext = os.path.splitext(init_from)[1].lower()
    if ext in SAFETENSORS_EXTENSIONS + TORCH_EXTENSIONS:
        loaded, report = from_torchvision(load_state_dict(init_from), model_name, variables,
                                          reinit=head)
    elif os.path.isdir(init_from):
        from cnn_jax.train.checkpoint import restore_variables
        source, _ = restore_variables(init_from)
        loaded, report = load_pretrained(variables, source, reinit=head)
    else:
        raise FileNotFoundError(
            f"config.transfer.init_from={init_from!r} is neither a run's workdir nor a "
            f"torchvision state-dict file ({', '.join(SAFETENSORS_EXTENSIONS + TORCH_EXTENSIONS)}).")
    report.source = init_from
    return loaded, report


def setup_transfer(config, state: TrainState, learning_rate: optax.ScalarOrSchedule,
                   log: Callable[[str], None] = print) -> TrainState:
    """`state` (fresh from `create_train_state`) set up as `config.transfer` asks: variables
    loaded from `init_from`, the optimizer of `config.optimizer` with frozen parts and
    learning-rate multipliers, BatchNorm frozen where asked. Returns `state` itself when
    `config.transfer` asks for nothing."""
    options = transfer_options(config)
    head = options["head"]
    partitioned = bool(options["freeze"] or options["lr_multipliers"])
    if not (options["init_from"] or partitioned or options["freeze_batch_norm"] == "all"):
        return state
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    if options["init_from"]:
        variables, report = load_init(options["init_from"], config.model.name, variables, head)
        log("transfer: " + str(report).replace("\n", "\n          "))
    params = variables["params"]
    tx = state.tx
    if partitioned:
        tx = freeze_lib.make_transfer_optimizer(
            config.optimizer, learning_rate, freeze=options["freeze"], head=head,
            unfreeze_after=options["unfreeze_after_steps"],
            lr_multipliers=options["lr_multipliers"])
        frozen = freeze_lib.frozen_names(params, freeze=options["freeze"], head=head,
                                         lr_multipliers=options["lr_multipliers"])
        sizes = dict(zip(_names(params), (p.size for p in jax.tree.leaves(params))))
        total, n_frozen = sum(sizes.values()), sum(sizes[n] for n in frozen)
        when = (f"until step {options['unfreeze_after_steps']}"
                if options["unfreeze_after_steps"] else "for the whole run")
        log(f"transfer: {n_frozen:,} of {total:,} parameters frozen {when} "
            f"({len(frozen)} arrays); {total - n_frozen:,} train"
            + (f"; learning-rate multipliers {options['lr_multipliers']}"
               if options["lr_multipliers"] else ""))
    apply_fn = state.apply_fn
    mode = options["freeze_batch_norm"]
    if state.batch_stats and mode != "none":
        is_frozen = ((lambda name: True) if mode == "all"
                     else freeze_lib.name_matcher(options["freeze"], head))
        if mode == "all" or options["freeze"]:
            apply_fn = freeze_lib.freeze_batch_norm(apply_fn, is_frozen)
            log(f"transfer: BatchNorm statistics frozen in "
                f"{'every layer' if mode == 'all' else 'the frozen parts'} (inference mode)")
    return state.replace(params=params, batch_stats=variables.get("batch_stats", {}), tx=tx,
                         opt_state=tx.init(params), apply_fn=apply_fn)


def _names(tree) -> list[str]:
    return jax.tree.leaves(freeze_lib._names(tree))

