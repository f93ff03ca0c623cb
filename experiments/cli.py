"""What the commands that use a trained run share (explain, evaluate, predict): the run's
model, variables and dataset, read from its workdir, and image files read as its data were.

    run = load_run("runs/lenet5_digits")                  # the latest checkpoint
    run = load_run("runs/lenet5_digits", checkpoint="best")
    logits = run.logits(run.preprocess(images))           # images: (N, H, W, C) uint8

Every problem with the workdir, the checkpoint or a file is a `UserError` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax.data import Dataset, get_dataset
from cnn_jax.data.image_folder import EXTENSIONS
from cnn_jax.data.image_ops import resize_center_crop
from cnn_jax.data.transforms import make_preprocess
from cnn_jax.errors import UserError, is_user_error
from cnn_jax.models import get_model
from cnn_jax.transfer.loading import check_finite

CHECKPOINTS = ("latest", "best")  # or a step number


def section_options(section: dict) -> dict:
    return {k: v for k, v in section.items() if k != "name"}


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: {workdir!r} is not a training run's workdir "
                        "(python -m experiments.train ... --workdir DIR writes it).")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}).") from None


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """The run's model, as `train_and_evaluate` built it (one device)."""
    kwargs = section_options(config.model.to_dict())
    kwargs["dtype"] = jnp.dtype(kwargs.get("dtype", "float32"))
    return get_model(config.model.name, num_classes=num_classes, **kwargs)


def check_variables(variables: Any, expected: Any, source: str) -> dict:
    """`variables` restricted to the collections the model has, checked leaf by leaf
    against the model's own shapes, and for NaN/Inf."""
    if not isinstance(variables, dict):
        raise UserError(f"{source} holds a {type(variables).__name__}, not the variables "
                        "{'params': ..., 'batch_stats': ...}.")
    variables = {k: variables[k] for k in expected if k in variables}
    missing = [k for k in expected if k not in variables]
    if missing:
        raise UserError(f"{source} has no {missing} (it holds {sorted(variables)}).")
    want = jax.tree_util.tree_flatten_with_path(expected)[0]
    got = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
    for path, leaf in want:
        name = jax.tree_util.keystr(path)
        if path not in got:
            raise UserError(f"{source} does not match the run's model: {name} is missing.")
        if tuple(np.shape(got[path])) != tuple(leaf.shape):
            raise UserError(f"{source} does not match the run's model: {name} has shape "
                            f"{np.shape(got[path])}, the model needs {leaf.shape}.")
    check_finite(variables, source)
    return jax.tree.map(jnp.asarray, variables)


def load_variables_file(path: str) -> Any:
    """The variables in a msgpack file of `flax.serialization.msgpack_serialize`."""
    from flax import serialization
    if os.path.isdir(path):
        raise UserError(f"--variables {path} is a directory; give a .msgpack file of flax."
                        "serialization.msgpack_serialize({'params': ..., 'batch_stats': ...}).")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise UserError(f"--variables {path} is empty (0 bytes).")
    try:
        return serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several types for data it cannot parse
        raise UserError(f"--variables {path} is not a msgpack file of flax.serialization "
                        f"({type(e).__name__}: {e}).") from None


def restore_checkpoint(workdir: str, checkpoint: str = "latest", ema: bool = False
                       ) -> tuple[Any, str]:
    """The variables of the run's `checkpoint` ('latest', 'best' or a step), or with `ema`
    their moving average (`config.ema`), and where from."""
    from cnn_jax.train.checkpoint import restore_variables
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise UserError(
            f"{workdir} has no checkpoints/ folder, so there are no trained parameters. "
            "Train with checkpointing, or pass --variables FILE.msgpack "
            "(flax.serialization.msgpack_serialize({'params': ..., 'batch_stats': ...})).")
    if checkpoint not in CHECKPOINTS and not str(checkpoint).isdigit():
        raise UserError(f"Unknown --checkpoint {checkpoint!r}. Valid: latest, best, or a step "
                        "number.")
    step = int(checkpoint) if str(checkpoint).isdigit() else None
    try:
        variables, _ = restore_variables(workdir, step, best=checkpoint == "best", ema=ema)
    except Exception as e:
        if is_user_error(e):
            raise
        # orbax/tensorstore raise many types for files cut short or overwritten
        raise UserError(f"The {checkpoint} checkpoint in {directory} cannot be read "
                        f"({type(e).__name__}: {str(e)[:300]}); it may be damaged. Pass "
                        f"--checkpoint with another of its steps: "
                        f"{sorted(int(d) for d in os.listdir(directory) if d.isdigit())}.") from e
    source = directory if step is None else os.path.join(directory, str(step))
    return variables, source + (" (EMA weights)" if ema else "")


@dataclasses.dataclass
class Run:
    """A trained run, ready to predict: its model, variables, config and test split (whose
    class names, image shape and statistics every image goes through)."""
    model: Any
    variables: dict
    config: ml_collections.ConfigDict
    dataset: Dataset
    source: str  # where the variables came from

    @property
    def preprocess(self) -> Callable:
        """(N, H, W, C) raw images -> the model's input, by the run's eval transforms."""
        return preprocess_fn(self.config, self.dataset)

    def logits(self, images) -> np.ndarray:
        forward = jax.jit(lambda v, x: self.model.apply(v, x, train=False))
        return np.asarray(forward(self.variables, images), np.float32)


def load_run(workdir: str, variables_path: str | None = None, checkpoint: str = "latest",
             ema: bool = False) -> Run:
    """The run in `workdir`: the model from its config.json, the variables
    ({'params', 'batch_stats'}) from its `checkpoint` ('latest', 'best' or a step; with `ema`
    their moving average), or from `variables_path` (a msgpack file of flax.serialization)
    when given."""
    config = read_config(workdir)
    dataset = get_dataset(config.dataset.name, "test", **section_options(config.dataset.to_dict()))
    model = build_model(config, dataset.num_classes)
    if variables_path is not None:
        variables, source = load_variables_file(variables_path), variables_path
    else:
        variables, source = restore_checkpoint(workdir, checkpoint, ema)
    dummy = jax.ShapeDtypeStruct((1, *input_shape(config, dataset)), jnp.float32)
    expected = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), dummy)
    return Run(model, check_variables(variables, expected, source), config, dataset, source)


def preprocess_fn(config, dataset):
    preprocess = make_preprocess(config.eval_transforms, train=False,
                                 num_classes=dataset.num_classes, mean=dataset.mean,
                                 std=dataset.std)
    return jax.jit(lambda images: preprocess(jax.random.key(0), {
        "image": images, "label": jnp.zeros(len(images), jnp.int32)})["image"])


def input_shape(config, dataset) -> tuple[int, ...]:
    images = jax.ShapeDtypeStruct((1, *dataset.image_shape), jnp.float32)
    return tuple(jax.eval_shape(preprocess_fn(config, dataset), images).shape[1:])


def read_image(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """An image file as (H, W, C) uint8 with the dataset's size and channels: scaled to cover
    the size and centre-cropped, as image folders are read for training."""
    from PIL import Image
    if os.path.isdir(path) or not os.path.exists(path):
        raise UserError(f"No image file {path}" + (" (it is a directory)." if os.path.isdir(path)
                                                    else "."))
    if os.path.getsize(path) == 0:
        raise UserError(f"Image file {path} is empty (0 bytes).")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L" if shape[2] == 1 else "RGB"))
    except Exception as e:  # PIL raises several types for files it cannot decode
        raise UserError(f"Cannot read image file {path}: {e}. Valid images: "
                        f"{', '.join(EXTENSIONS)} files PIL can decode.") from None
    array = array[..., None] if shape[2] == 1 else array
    return resize_center_crop(array, shape[:2])


def list_images(folder: str) -> list[str]:
    """The image files under `folder` (sub-folders included), sorted."""
    if not os.path.isdir(folder):
        raise UserError(f"Image folder {folder} does not exist (or is not a folder).")
    paths = sorted(str(p) for p in Path(folder).rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                   and p.suffix.lower() in EXTENSIONS)
    if not paths:
        raise UserError(f"No images ({', '.join(EXTENSIONS)}) in {folder}.")
    return paths
