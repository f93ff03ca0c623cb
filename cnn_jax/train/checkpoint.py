"""PLACEHOLDER for issue 5's orbax checkpoints: the lead replaces this module.

Issue 7 (transfer learning) needs exactly one function from here:

    restore_variables(workdir) -> (variables, config)

`variables`: {'params': ..., 'batch_stats': ...} (batch_stats only for models with BatchNorm)
as nested dicts of arrays; `config`: the run's resolved config as a plain dict (what
`config.json` holds). `cnn_jax.transfer.setup` calls it for `config.transfer.init_from=WORKDIR`.

Until the orbax checkpoints land, a run's variables are written by `save_variables` (called by
`experiments/transfer.py` after pretraining, not by the training loop) to
`WORKDIR/variables.msgpack` with `flax.serialization.to_bytes`, beside the loop's own
`WORKDIR/config.json`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import serialization

VARIABLES_FILE = "variables.msgpack"
CONFIG_FILE = "config.json"


def save_variables(workdir: str, variables: Mapping[str, Any],
                   config: Mapping[str, Any] | None = None) -> None:
    """PLACEHOLDER: `variables` to WORKDIR/variables.msgpack (and `config` to config.json)."""
    os.makedirs(workdir, exist_ok=True)
    host = jax.tree.map(np.asarray, dict(variables))
    tmp = os.path.join(workdir, VARIABLES_FILE + ".tmp")
    with open(tmp, "wb") as f:
        f.write(serialization.to_bytes(host))
    os.replace(tmp, os.path.join(workdir, VARIABLES_FILE))
    if config is not None:
        with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
            json.dump(config.to_dict() if hasattr(config, "to_dict") else dict(config), f,
                      indent=2)


def restore_variables(workdir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """PLACEHOLDER: (variables, config) of the run in `workdir`."""
    path = os.path.join(workdir, VARIABLES_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No trained variables in {workdir!r} (expected {path}).")
    with open(path, "rb") as f:
        variables = serialization.msgpack_restore(f.read())
    config_path = os.path.join(workdir, CONFIG_FILE)
    config = {}
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config = json.load(f)
    return variables, config
