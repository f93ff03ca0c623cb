"""Errors a user can cause end each command with one clear line, without a traceback
(`cnn_jax.errors.run_main`); real bugs keep theirs; `--debug` shows it. Library noise that
tells the user nothing is filtered."""

import logging
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import serialization

from cnn_jax.config import check_config, default_config, load_config_file
from cnn_jax.errors import UserError, is_user_error, quiet_library_noise, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "lenet5_digits.py")


def command(*args, env=None):
    """Runs `python -m <args>` from the repository root; (returncode, stderr)."""
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, **(env or {})})
    return result.returncode, result.stderr


def assert_one_clear_line(stderr, *words):
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith("error: ") and len(lines) <= 3, stderr
    for word in words:
        assert word in stderr, (word, stderr)


# --- The commands, in a subprocess --------------------------------------------------------

@pytest.mark.slow
def test_train_unknown_model_is_one_line_and_debug_shows_the_traceback(tmp_path):
    code, err = command("experiments.train", "--config", CONFIG, "--workdir", str(tmp_path / "a"),
                        "--config.model.name=lenet9")
    assert code == 2
    assert_one_clear_line(err, "config.model.name", "'lenet9'", "resnet18")
    assert not (tmp_path / "a").exists()  # refused before anything is written
    (tmp_path / "no_get_config.py").write_text("x = 1\n")
    code, err = command("experiments.train", "--config", str(tmp_path / "no_get_config.py"),
                        "--workdir", str(tmp_path / "b"), env={"CNN_JAX_DEBUG": "1"})
    assert code == 1 and "Traceback" in err and "defines no get_config()" in err


def test_unprepared_dataset_is_one_line(tmp_path, capsys, caplog):
    from cnn_jax.data import get_dataset
    assert run_main(lambda: get_dataset("mnist", "train", data_dir=str(tmp_path)), argv=[]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: TFDS dataset 'mnist' is not "
                                                     "prepared"), err
    assert f"python -m cnn_jax.data.prepare mnist --data_dir {tmp_path}" in err
    assert "config.dataset.data_dir" in err
    assert not any("dataset_info.json" in r.getMessage() for r in caplog.records)


# --- Which errors are the user's ----------------------------------------------------------

def _raise_user():
    raise UserError("config.x is wrong")


def _unpack_bug():
    a, b = (1, 2, 3)  # noqa: F841 (a bug: an implicit ValueError)


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("CNN_JAX_DEBUG", "0")  # restored after the test: --debug sets it
    assert run_main(_raise_user, argv=[]) == 2
    assert capsys.readouterr().err == "error: config.x is wrong\n"
    with pytest.raises(ValueError, match="too many values"):
        run_main(_unpack_bug, argv=[])                  # our code, but not a raise: a bug
    with pytest.raises(ValueError):
        run_main(lambda: np.reshape(np.zeros(3), (2, 2)), argv=[])  # raised inside NumPy
    with pytest.raises(TypeError):
        run_main(lambda: len(None), argv=[])
    assert run_main(lambda: open(tmp_path / "missing.txt"), argv=[]) == 2  # names the file
    assert "missing.txt" in capsys.readouterr().err
    argv = ["prog", "--debug", "--x"]
    with pytest.raises(UserError):
        run_main(_raise_user, argv=argv)
    assert argv == ["prog", "--x"]  # main's own parser never sees --debug


def test_validation_messages_of_cnn_jax_are_user_errors():
    from cnn_jax.config import get_value
    from cnn_jax.models import get_model
    with pytest.raises(KeyError) as info:
        get_value(default_config(), "optimizer.lr")
    assert is_user_error(info.value)
    with pytest.raises(ValueError) as info:
        get_model("lenet9", num_classes=10)
    assert is_user_error(info.value)


# --- Config checks ------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, words", [
    ("model.name", "lenet9", ["config.model.name", "lenet5"]),
    ("dataset.name", "imagenet", ["config.dataset.name", "cifar10"]),
    ("model.num_classes", 10, ["config.model.num_classes", "dataset"]),
    ("model.widht", 2, ["config.model.widht", "Valid options", "act"]),
    ("schedule.boundaries", "0.5,0.75", ["config.schedule.boundaries", "tuple"]),
    ("schedule.boundaries", ("0.5", "0.75"), ["config.schedule.boundaries", "tuple"]),
    ("schedule.boundaries", (0.75, 0.5), ["config.schedule.boundaries", "increasing"]),
    ("schedule.boundaries", (0.5, 1.5), ["config.schedule.boundaries", "(0, 1)"]),
    ("schedule.decay_factor", 2.0, ["config.schedule.decay_factor", "[0, 1]"]),
    ("input_threads", -1, ["config.input_threads", ">= 0"]),
])
def test_check_config_names_the_key_and_what_is_valid(key, value, words):
    config = default_config()
    if "." in key:  # a new section: a config file may set any type, the command line may not
        section, leaf = key.split(".")
        config[section] = ml_collections.ConfigDict({**config[section].to_dict(), leaf: value})
    else:
        config[key] = value
    with pytest.raises(UserError) as info:
        check_config(config)
    for word in words:
        assert word in str(info.value)
    check_config(default_config())  # the defaults pass


def test_load_config_file_messages(tmp_path):
    (tmp_path / "none.py").write_text("x = 1\n")
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    for name, words in [("none.py", ["defines no get_config()"]),
                        ("broken.py", ["line 1"]), ("missing.py", ["No config file"])]:
        with pytest.raises(UserError) as info:
            load_config_file(str(tmp_path / name))
        assert name in str(info.value) and all(w in str(info.value) for w in words)
    with pytest.raises(UserError, match="is a directory"):
        load_config_file(str(tmp_path))


# --- Files: weights and images ------------------------------------------------------------

def test_bad_safetensors_and_non_finite_weights_name_the_file_and_arrays(tmp_path):
    from safetensors.numpy import save_file
    from cnn_jax.transfer.loading import load_pretrained
    from cnn_jax.transfer.torchvision import load_state_dict
    (tmp_path / "text.safetensors").write_text("not weights at all\n")
    save_file({"fc.weight": np.array([[1.0, np.nan], [np.inf, 0.0]], np.float32),
               "fc.bias": np.zeros(2, np.float32)}, str(tmp_path / "nan.safetensors"))
    data = (tmp_path / "nan.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-5])
    for name in ("text", "cut"):
        with pytest.raises(UserError, match=f"{name}.safetensors is not a readable"):
            load_state_dict(str(tmp_path / f"{name}.safetensors"))
    with pytest.raises(UserError) as info:
        load_state_dict(str(tmp_path / "nan.safetensors"))
    assert "nan.safetensors" in str(info.value) and "fc.weight (1 NaN, 1 Inf of 4)" in str(
        info.value) and "fc.bias" not in str(info.value)
    target = {"params": {"head": {"kernel": np.zeros((2, 2), np.float32)}}}
    bad = {"params": {"head": {"kernel": np.full((2, 2), np.nan, np.float32)}}}
    with pytest.raises(UserError, match="params/head/kernel"):
        load_pretrained(target, bad)
    load_pretrained(target, bad, reinit="head")  # a re-initialized array is not used


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A LeNet-5 digits run's config.json and one checkpoint of initial weights."""
    from cnn_jax.models import get_model
    from cnn_jax.train.checkpoint import save_variables
    from experiments.configs import lenet5_digits
    workdir = str(tmp_path_factory.mktemp("run"))
    shapes = jax.eval_shape(get_model("lenet5", num_classes=10, act="relu", pool="max").init,
                            jax.random.key(0), np.zeros((1, 32, 32, 1), np.float32))
    rng = np.random.default_rng(0)  # random weights, without compiling an init
    variables = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), shapes)
    save_variables(workdir, variables, lenet5_digits.get_config())
    return workdir, variables


def test_explain_bad_files_are_one_line(run_dir, tmp_path, capsys):
    from experiments import explain as command_module
    workdir, variables = run_dir
    (tmp_path / "garbage.msgpack").write_bytes(bytes(range(200, 256)) * 3)
    (tmp_path / "empty.msgpack").write_bytes(b"")
    (tmp_path / "empty.png").write_bytes(b"")
    nan = jax.tree.map(np.array, variables)  # writable copies
    nan["params"]["C1"]["conv"]["kernel"][0, 0, 0, 0] = np.nan
    (tmp_path / "nan.msgpack").write_bytes(serialization.msgpack_serialize(nan))
    cases = [(["--variables", str(tmp_path / "garbage.msgpack")], "garbage.msgpack"),
             (["--variables", str(tmp_path / "empty.msgpack")], "empty (0 bytes)"),
             (["--variables", str(tmp_path)], "is a directory"),
             (["--variables", str(tmp_path / "nan.msgpack")], "params/C1/conv/kernel (1 NaN"),
             (["--images", str(tmp_path / "empty.png")], "empty.png is empty"),
             (["--images", str(tmp_path / "none.png")], "No image file")]
    for args, words in cases:
        assert command_module.main([workdir, "--out", str(tmp_path / "out"), *args]) == 2, args
        assert_one_clear_line(capsys.readouterr().err, words)
    assert not (tmp_path / "out").exists()


def test_library_noise_is_dropped(caplog, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    quiet_library_noise()
    # The C++ runtime's INFO lines (the processes connecting to each other) stay hidden in
    # the training processes that launch_local starts, which inherit the environment.
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    quiet_library_noise()  # once: no second filter
    absl = logging.getLogger("absl")
    assert sum(type(f).__name__ == "_DropNoise" for f in absl.filters) == 1
    with caplog.at_level(logging.WARNING):
        absl.warning("Given directory is read only=%s", "/x")
        absl.warning("Requested `tracked_metric`; did not provide metrics.")
        logging.getLogger("absl").warning("OpenCV is not installed. We recommend ...")
        logging.getLogger("asyncio").error("Exception in callback", exc_info=RuntimeError(
            "Event loop is closed"))
        absl.warning("a warning that matters")
    assert [r.getMessage() for r in caplog.records] == ["a warning that matters"]
