"""The default experiment config. Every config in `experiments/configs/` starts from it.

`model` and `dataset` take a `name` plus any options of that model or dataset loader
(see `cnn_jax.models.model_options(name)` and the loader's signature): add the key in a
config file, then override it on the command line with `--config.model.act=tanh`.
"""

import ast
import importlib.util
import os

import ml_collections

from cnn_jax.errors import UserError


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.dataset = ml_collections.ConfigDict({"name": "digits"})
    # The task (cnn_jax/tasks): classification | segmentation; "" takes the dataset's own.
    config.task = ""
    # dtype: the computation's ("float32" or "bfloat16": mixed precision, parameters,
    # optimizer state, loss and softmax stay float32).
    config.model = ml_collections.ConfigDict({"name": "lenet5", "dtype": "float32"})

    config.num_epochs = 10
    config.batch_size = 32
    config.eval_batch_size = 256
    config.label_smoothing = 0.0
    # Transforms run on device, batch-wise, in order (see cnn_jax/data/transforms.py), e.g.
    # "random_crop(padding=4)|hflip|normalize" or "pad(2)|normalize|mixup(alpha=0.2)".
    config.train_transforms = ""
    config.eval_transforms = ""
    config.input_threads = 2      # host threads reading and decoding ahead of the step
    config.segmentation = ml_collections.ConfigDict({  # config.task == "segmentation" only
        "ignore_value": 255,      # mask value left out of loss and metrics (and padding's fill)
        "loss": "cross_entropy",  # cross_entropy | dice | cross_entropy+dice
        "class_weights": (),      # per-class cross-entropy weights; () for all 1
    })

    # Model selection (README "Model selection"): per-epoch metrics on a validation split, the
    # dataset's own where it has one, else this fraction of train (stratified, drawn with
    # validation_seed, not the run's seed); 0 and no own split: nothing is selected.
    config.validation_fraction = 0.1
    config.validation_seed = 0
    config.eval_test_every_epoch = False  # the test split is evaluated at the end only
    config.early_stopping = ml_collections.ConfigDict({
        "metric": "val_accuracy",  # a val_* or train_* metric (lower is better for *_loss)
        "patience": 0,            # stop after this many epochs without improvement (0: off)
        "min_delta": 0.0,         # an improvement must exceed this
    })

    # An exponential moving average of the weights (params and BatchNorm statistics), evaluated
    # beside them every epoch as val_ema_* (README "Model selection"). decay 0: none kept;
    # e.g. 0.999 or 0.9999 (the average spans about 1 / (1 - decay) steps). warmup: the decay
    # at step t is min(decay, (1 + t) / (10 + t)), so short runs get a useful average too.
    config.ema = ml_collections.ConfigDict({"decay": 0.0, "warmup": True})

    # Lifecycle (README "Runs: checkpoints, logs, reports, sweeps").
    config.resume = True          # continue from the workdir's latest checkpoint, if any
    config.log_every_steps = 50   # train scalars to steps.jsonl/TensorBoard every this many steps
    config.checkpoint = ml_collections.ConfigDict({
        "every_steps": 0,         # also save every this many steps (0: only at epoch ends)
        "keep": 3,                # the latest `keep` checkpoints are kept ...
        "best_metric": "val_accuracy",  # ... and the best by this val_*/train_* metric ("": none)
        "best_mode": "max",       # max | min
    })

    # Scale (README "Scaling out"). batch_size is the global batch over all devices/processes.
    config.parallel = "none"      # none (one device) | pmap | mesh (jax.jit over a device mesh)
    config.grad_accum_steps = 1   # micro-batches per optimizer step, accumulated inside the step
    config.distributed = ml_collections.ConfigDict({
        "coordinator_address": "",  # host:port of process 0; empty: a single process ...
        "num_processes": 1,
        "process_id": 0,
        "auto": False,            # ... unless True: jax.distributed.initialize() detects the
    })                            # cluster (SLURM, Cloud TPU, Kubernetes, MPI)

    config.optimizer = ml_collections.ConfigDict({
        "name": "sgd",            # sgd | adam | adamw | rmsprop
        "learning_rate": 0.05,    # peak learning rate
        "momentum": 0.9,          # sgd, rmsprop
        "nesterov": False,        # sgd
        "b1": 0.9, "b2": 0.999,   # adam, adamw
        "eps": 1e-8,              # adam, adamw, rmsprop
        "rms_decay": 0.99,        # rmsprop
        "weight_decay": 0.0,
        "weight_decay_type": "decoupled",  # decoupled | l2
        "grad_clip_norm": 0.0,    # 0 turns clipping off
    })
    config.schedule = ml_collections.ConfigDict({
        "name": "cosine",         # constant | step | cosine | one_cycle
        "warmup_epochs": 0.0,     # linear warm-up from 0 (not with one_cycle)
        "boundaries": (0.5, 0.75),  # step: fractions of training where lr is multiplied ...
        "decay_factor": 0.1,      # ... by this
        "end_factor": 0.0,        # cosine: final lr as a fraction of the peak
        "pct_start": 0.3,         # one_cycle
        "div_factor": 25.0,       # one_cycle
        "final_div_factor": 1e4,  # one_cycle
    })
    # Transfer learning (README "Transfer learning", cnn_jax/transfer/setup.py). Patterns are
    # comma-separated regular expressions on parameter names such as "layer1_0/conv1/conv/kernel";
    # "backbone" is every parameter `head` does not name.
    config.transfer = ml_collections.ConfigDict({
        "init_from": "",          # "" | a cnn_jax run's workdir | a torchvision .pth/.safetensors file
        "head": "head",           # the classifier: re-initialized when loading
        "freeze": "",             # parameters not trained, e.g. "backbone"
        "unfreeze_after_steps": 0,  # 0: frozen for the whole run; N: trained from step N on
        "lr_multipliers": "",     # "pattern=m,...", e.g. "backbone=0.1"; the first match wins
        "freeze_batch_norm": "frozen_parts",  # frozen_parts | none | all: BatchNorm in inference mode
    })
    return config


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of an experiment config file."""
    if os.path.isdir(path) or not os.path.exists(path):
        raise UserError(f"No config file {path!r}" + (" (it is a directory)" if os.path.isdir(path)
                                                      else "") + ": give a Python file defining "
                        "get_config(), e.g. experiments/configs/lenet5_digits.py.")
    spec = importlib.util.spec_from_file_location("experiment_config", path)
    if spec is None:
        raise UserError(f"Config file {path!r} is not a Python file (.py) defining get_config().")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"Config file {path!r}, line {e.lineno}: {e.msg}.") from e
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"Config file {path!r} defines no get_config(): a config file is a Python "
                        "file whose get_config() returns the ConfigDict (see "
                        "experiments/configs/lenet5_digits.py).")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"get_config() of {path!r} returned a {type(config).__name__}, not an "
                        "ml_collections.ConfigDict.")
    return config


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# What a key means in a saved config written before the key existed (a run's config.json or
# checkpoint): what the code did then. A resume compares configs with these filled in.
ABSENT_MEANS = {"ema.decay": 0.0, "ema.warmup": True}


def ema_options(config) -> dict:
    """config.ema as {'decay', 'warmup'}; a config without it (written before it existed)
    keeps no EMA."""
    ema = config.get("ema") or {}
    return {"decay": ema.get("decay", 0.0), "warmup": ema.get("warmup", True)}


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError, naming the key and what is valid, for a value training cannot use:
    run before anything is built."""
    from cnn_jax.data import DATASETS, dataset_options
    from cnn_jax.models import MODELS, model_options

    for section, registry in (("model", MODELS), ("dataset", DATASETS)):
        name = config[section].get("name")
        if name not in registry:
            raise UserError(f"Unknown {section} {name!r}. Valid choices: "
                            f"{', '.join(sorted(registry))}. Set config.{section}.name to one.")
    if "num_classes" in config.model:
        raise UserError(f"config.model.num_classes cannot be set: the number of classes comes "
                        f"from the dataset (config.dataset.name={config.dataset.name!r}). Remove "
                        "it from the config.")
    for section, valid in (("model", model_options(config.model.name) + ["dtype"]),
                           ("dataset", dataset_options(config.dataset.name))):
        unknown = sorted(set(config[section]) - set(valid) - {"name"})
        if unknown:
            keys = ", ".join(f"config.{section}.{k}" for k in unknown)
            raise UserError(f"Unknown option(s) {keys} for {section} {config[section].name!r}. "
                            f"Valid options: {', '.join(sorted(set(valid))) or 'none'}.")
    threads = config.get("input_threads", 0)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise UserError(f"config.input_threads must be an integer >= 0 (0 reads in the training "
                        f"thread), got {threads!r}.")
    schedule = config.schedule
    boundaries = schedule.get("boundaries", ())
    if not isinstance(boundaries, (tuple, list)) or not all(_is_number(b) for b in boundaries):
        raise UserError(f"config.schedule.boundaries must be a tuple of fractions of training in "
                        f"(0, 1), e.g. (0.5, 0.75); got {boundaries!r}.")
    if not all(0 < b < 1 for b in boundaries) or list(boundaries) != sorted(set(boundaries)):
        raise UserError(f"config.schedule.boundaries must be increasing fractions of training in "
                        f"(0, 1), e.g. (0.5, 0.75); got {tuple(boundaries)}.")
    for key, low, high in (("decay_factor", 0, 1), ("end_factor", 0, 1), ("pct_start", 0, 1)):
        value = schedule.get(key, low)
        if not _is_number(value) or not low <= value <= high:
            raise UserError(f"config.schedule.{key} must be a number in [{low}, {high}] (a "
                            f"fraction of the peak learning rate), got {value!r}.")
    warmup = schedule.get("warmup_epochs", 0)
    if not _is_number(warmup) or warmup < 0:
        raise UserError(f"config.schedule.warmup_epochs must be a number >= 0, got {warmup!r}.")
    ema = ema_options(config)
    if not _is_number(ema["decay"]) or not 0 <= ema["decay"] < 1:
        raise UserError(f"config.ema.decay must be a number in [0, 1) (0: no moving average; "
                        f"e.g. 0.999), got {ema['decay']!r}.")
    if not isinstance(ema["warmup"], bool):
        raise UserError(f"config.ema.warmup must be True or False, got {ema['warmup']!r}.")


def parse_value(text: str, like):
    """`text` as the type of the config's current value `like`."""
    if isinstance(like, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() == "true"
    if isinstance(like, (int, float)):
        return type(like)(text)
    if isinstance(like, tuple):
        return tuple(ast.literal_eval(text))
    return text


def get_value(config, key: str):
    """The value at dotted `key`; a key the config lacks is an error listing the valid keys."""
    node, walked = config, []
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            where = "config." + ".".join(walked) if walked else "config"
            valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(a value)"
            raise KeyError(f"Unknown config key {key!r}: {where} has no {part!r}. "
                           f"Valid keys of {where}: {valid}.")
        node, walked = node[part], walked + [part]
    return node


def set_value(config, key: str, value) -> None:
    """Sets dotted `key`; a string `value` is parsed as the type of the current value."""
    current = get_value(config, key)
    if isinstance(value, str):
        try:
            value = parse_value(value, current)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"config.{key}: {e} (expected a {type(current).__name__}).") from None
    *parents, leaf = key.split(".")
    node = get_value(config, ".".join(parents)) if parents else config
    node[leaf] = value
