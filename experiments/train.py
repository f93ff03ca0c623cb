"""Train and evaluate one experiment config.

    python -m experiments.train --config experiments/configs/lenet5_digits.py \
        --workdir runs/lenet5_digits --config.optimizer.learning_rate=0.05

Any config value can be overridden with --config.<key>=<value>; keys that do not exist
in the config are an error.
"""

from absl import app, flags
from ml_collections import config_flags

from cnn_jax.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics and the resolved config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
