"""The launcher end to end (in a subprocess, as a researcher runs it), config files, and the
errors a bad config gets before any compute starts."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from cnn_jax.config import default_config
from cnn_jax.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py")))
CONFIGS = [c for c in CONFIGS if not c.endswith("__init__.py")]


def launch(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_launcher_trains_and_writes_metrics(tmp_path):
    workdir = tmp_path / "run"
    result = launch("--config", "experiments/configs/lenet5_digits.py", "--workdir", str(workdir),
                    "--config.num_epochs=2", "--config.optimizer.learning_rate=0.05")
    assert result.returncode == 0, result.stderr
    assert "epoch   2/2" in result.stdout and "test" in result.stdout
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["step"] == 2 * (1292 // 32)  # 1,437 less 145 carved for validation
    assert records[-1]["val_num_examples"] == 145 and records[-1]["test_num_examples"] == 360
    assert "test_accuracy" not in records[0]  # the test split at the end only
    assert records[-1]["test_accuracy"] > 0.5  # two epochs already learn the digits
    config = json.load(open(workdir / "config.json"))
    assert config["num_epochs"] == 2 and config["model"]["name"] == "lenet5"
    final = json.load(open(workdir / "final_metrics.json"))
    assert len(final["per_class_f1"]) == 10 and len(final["confusion_matrix"]) == 10
    assert final["accuracy"] == records[-1]["test_accuracy"]
    assert not glob.glob(str(workdir / "*.tmp"))


@pytest.mark.parametrize("override,match", [
    ("--config.model.name=resnet19", "Unknown model 'resnet19'. Valid choices:"),
    ("--config.optimizer.name=adagrad", "Unknown optimizer 'adagrad'"),
    ("--config.dataset.name=imagenet", "Unknown dataset 'imagenet'. Valid choices: cifar10"),
    ("--config.train_transforms=random_crop(pading=4)", "Transform random_crop: got an unexpected"),
    ("--config.eval_transforms=hflip", "Evaluation transforms must be deterministic"),
    ("--config.batch_size=0", "config.batch_size must be a positive integer"),
    ("--config.optimizer.learning_rate=-0.1", "learning_rate must be positive"),
    ("--config.optimizer.lr=0.1", "Unknown config key 'optimizer.lr'"),
    ("--config.num_epochs=two", "--config.num_epochs=two: invalid literal for int()"),
])
def test_bad_config_fails_before_compute(tmp_path, override, match):
    workdir = tmp_path / "run"
    result = launch("--config", "experiments/configs/lenet5_digits.py", "--workdir", str(workdir),
                    override, timeout=120)
    assert result.returncode != 0
    assert match in result.stderr
    assert not workdir.exists()  # nothing half-written


def test_nan_loss_stops_with_the_step_named():
    config = default_config()
    config.num_epochs = 1
    config.optimizer.learning_rate = 1e12
    config.schedule.name = "constant"
    with pytest.raises(FloatingPointError, match=r"loss became nan at step \d+ \(epoch 1\)"):
        train_and_evaluate(config, None, log=lambda s: None)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_files_document_command_and_result(path):
    spec = importlib.util.spec_from_file_location("config_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = module.__doc__ or ""
    assert "python -m experiments.train --config experiments/configs/" in doc
    assert os.path.basename(path) in doc and "Result:" in doc
    config = module.get_config()
    assert set(default_config().keys()) <= set(config.keys())


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_files_build_and_trace_on_mock_data(path, tmp_path):
    """Each config's dataset, transforms, model, optimizer and jitted train and eval steps fit
    together: the whole step is traced with `jax.eval_shape` (nothing is allocated or run) on
    TFDS mock data of the config's dataset."""
    import jax
    import jax.numpy as jnp
    import tensorflow_datasets as tfds

    from cnn_jax import data as data_lib
    from cnn_jax.data.transforms import make_preprocess
    from cnn_jax.models import get_model
    from cnn_jax.train.loop import make_steps, model_input_shape
    from cnn_jax.train.optim import make_optimizer, make_schedule
    from cnn_jax.train.step import create_train_state

    spec = importlib.util.spec_from_file_location("config_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    options = {k: v for k, v in config.dataset.items() if k != "name"}
    if config.dataset.name == "image_folder":  # a folder of two classes stands in for the user's
        from PIL import Image
        for c in ("a", "b"):
            (tmp_path / c).mkdir()
            for i in range(3):
                Image.new("RGB", (40, 30), (i * 80, 40 + i, 200 - i)).save(tmp_path / c / f"{i}.png")
        options["root"] = str(tmp_path)
    # A class subset needs enough mock examples to hold some of its classes.
    with tfds.testing.mock_data(num_examples=64 if config.dataset.name == "subset" else 4):
        ds = data_lib.get_dataset(config.dataset.name, "train", **options)
    stats = dict(num_classes=ds.num_classes, mean=ds.mean, std=ds.std)
    train_pre = make_preprocess(config.train_transforms, **stats)
    eval_pre = make_preprocess(config.eval_transforms, train=False, **stats)
    shape = model_input_shape(train_pre, ds)
    assert model_input_shape(eval_pre, ds) == shape
    model = get_model(config.model.name, num_classes=ds.num_classes,
                      **{k: v for k, v in config.model.items() if k != "name"})
    tx = make_optimizer(config.optimizer, make_schedule(config.schedule,
                                                        config.optimizer.learning_rate, 100, 10))
    state = jax.eval_shape(lambda key: create_train_state(model, tx, key, shape), jax.random.key(0))
    train_fn, eval_fn = (jax.jit(f) for f in make_steps(config, train_pre, eval_pre))
    n = config.batch_size
    batch = {"image": jax.ShapeDtypeStruct((n, *ds.image_shape), jnp.asarray(ds.source[0]["image"]).dtype),
             "label": jax.ShapeDtypeStruct((n,), jnp.int32)}
    new_state, metrics = jax.eval_shape(train_fn, state, batch)
    assert metrics["loss"].shape == () and new_state.step.shape == ()
    counts = jax.eval_shape(eval_fn, state, {**batch, "mask": jax.ShapeDtypeStruct((n,), jnp.float32)})
    k = ds.num_classes
    expected = {"count": (), "loss_sum": (), "confusion": (k, k), **({"top5_correct": ()} if k > 5 else {})}
    assert {name: c.shape for name, c in counts.items()} == expected
