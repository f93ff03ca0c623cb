"""Train and evaluate one experiment config.

    python -m experiments.train --config experiments/configs/lenet5_digits.py \
        --workdir runs/lenet5_digits --config.optimizer.learning_rate=0.05

Any config value can be overridden with --config.<key>=<value>; a key the config does not
have is an error that lists the keys it does have.
"""

import importlib.util
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from cnn_jax.train import train_and_evaluate
from cnn_jax.train.parallel import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics and the resolved config.")
flags.mark_flags_as_required(["config", "workdir"])


def check_override_keys(argv: list[str]) -> None:
    """Exits with a clear message if a --config.<key> override names a key the config lacks.

    ml_collections would raise a bare KeyError from deep inside flag parsing instead.
    """
    path = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    if path is None:
        return
    spec = importlib.util.spec_from_file_location("experiment_config", path.split(":")[0])
    if spec is None:
        return  # absl reports the unreadable file itself
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for arg in argv:
        match = re.match(r"--(?:no)?config\.([\w.]+)", arg)
        if not match:
            continue
        node, walked = config, []
        for key in match.group(1).split("."):
            if not hasattr(node, "keys") or key not in node:
                where = "config." + ".".join(walked) if walked else "config"
                valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(a value, no keys)"
                sys.exit(f"Unknown config key '{match.group(1)}' in {arg!r}: {where} has no "
                         f"'{key}'. Valid keys of {where}: {valid}.")
            node, walked = node[key], walked + [key]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    initialize_distributed(_CONFIG.value.distributed)
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    check_override_keys(sys.argv[1:])
    app.run(main)
