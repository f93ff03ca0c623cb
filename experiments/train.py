"""Train and evaluate one experiment config.

    python -m experiments.train --config experiments/configs/lenet5_digits.py \
        --workdir runs/lenet5_digits --config.optimizer.learning_rate=0.05

Any config value can be overridden with --config.<key>=<value>; a key the config does not
have is an error that lists the keys it does have.

Rerunning the same command resumes the run from its workdir's latest checkpoint
(--config.resume=False starts over). Rerun a past run from its own record of its config:

    python -m experiments.train --config runs/lenet5_digits/config.py --workdir runs/again

SIGTERM or Ctrl-C saves a checkpoint at the next step and exits with status 0 and a message; a
second one ends the process at once. A workdir is used by one run at a time (WORKDIR/run.lock).
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cnn_jax.config import get_value, load_config_file
from cnn_jax.errors import run_main
from cnn_jax.train import train_and_evaluate
from cnn_jax.train.loop import Preempted
from cnn_jax.train.parallel import initialize_distributed
from cnn_jax.train.workdir import WorkdirLocked

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
    if path is None or not os.path.exists(path.split(":")[0]):
        return  # absl reports the missing flag or file itself
    config = load_config_file(path.split(":")[0])
    for arg in argv:
        match = re.match(r"--(?:no)?config\.([\w.]+)", arg)
        if match:
            try:
                get_value(config, match.group(1))
            except KeyError as e:
                sys.exit(f"{e.args[0]} (in {arg!r})")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    initialize_distributed(_CONFIG.value.distributed)
    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except Preempted as e:  # a checkpoint was saved: a clean exit, not a failure
        print(e, file=sys.stderr, flush=True)
    except WorkdirLocked as e:
        sys.exit(str(e))


def cli_main():
    check_override_keys(sys.argv[1:])
    app.run(main)


if __name__ == "__main__":
    sys.exit(run_main(cli_main))
