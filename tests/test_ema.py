"""The exponential moving average of the weights (`config.ema`): the step's average against a
NumPy recurrence, the loop's `val_ema_*`/`test_ema_*` against the averaged weights evaluated by
hand, selection on `val_ema_*`, a run with it off left exactly as before, resumption
bit-identical, and the bad configs. (Under pmap and mesh the average is checked with the rest of
the state in tests/test_parallel.py.)"""

import json
import os

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import linen as nn
from scipy.special import logsumexp

from cnn_jax.config import default_config
from cnn_jax.data import get_dataset
from cnn_jax.data.splits import validation_split
from cnn_jax.train import train_and_evaluate
from cnn_jax.train.checkpoint import Checkpointer, restore_variables
from cnn_jax.train.loop import Preempted, validate_config
from cnn_jax.train.step import create_train_state, train_step, with_ema
from cnn_jax.train.stopping import TEST_SIGNAL_ENV
from cnn_jax.train.workdir import check_same_run
from experiments import evaluate as evaluate_cli
from experiments.cli import load_run

TIMING = ("train_images_per_second", "epoch_seconds")
quiet = lambda message: None  # noqa: E731


def numpy_tree(tree):
    return jax.tree.map(lambda x: np.array(x, np.float64), tree)


class ConvBN(nn.Module):
    """The smallest model with BatchNorm (a zoo model's ResNet takes ~20 s to compile here)."""
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


@pytest.mark.parametrize("warmup", [True, False])
def test_the_step_averages_params_and_batch_statistics_as_the_recurrence_says(warmup):
    state = create_train_state(ConvBN(), optax.sgd(0.1, momentum=0.9), jax.random.key(0),
                               (12, 12, 3))
    assert state.batch_stats and state.ema is None
    decay = 0.3  # with warm-up, (1 + t) / (10 + t) is below it for t = 1, 2 and above from 3 on
    step = jax.jit(lambda s, b: train_step(s, b, ema_decay=decay, ema_warmup=warmup))
    plain = jax.jit(train_step)
    rng = np.random.default_rng(0)
    ema_state, raw_state = with_ema(state), state
    expected = numpy_tree({"params": state.params, "batch_stats": state.batch_stats})
    for t in range(1, 6):  # t: the optimizer steps taken, this one included
        batch = {"image": rng.normal(size=(16, 12, 12, 3)).astype(np.float32),
                 "label": rng.integers(0, 10, 16).astype(np.int32)}
        ema_state, _ = step(ema_state, batch)
        raw_state, _ = plain(raw_state, batch)
        d = min(decay, (1 + t) / (10 + t)) if warmup else decay
        new = numpy_tree({"params": ema_state.params, "batch_stats": ema_state.batch_stats})
        expected = jax.tree.map(lambda e, x: d * e + (1 - d) * x, expected, new)
        got = numpy_tree(ema_state.ema)
        for (path, e), g in zip(jax.tree_util.tree_leaves_with_path(expected),
                                jax.tree.leaves(got)):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6,
                                       err_msg=f"step {t} {jax.tree_util.keystr(path)}")
    # the average moved away from both the start and the raw weights ...
    last = jax.tree.leaves(ema_state.ema["batch_stats"])[0]
    assert not np.allclose(last, jax.tree.leaves(ema_state.batch_stats)[0])
    assert not np.allclose(last, jax.tree.leaves(state.batch_stats)[0])
    # ... and keeping it changes nothing else: the raw weights are those of a run without it
    for a, b in zip(jax.tree.leaves((ema_state.params, ema_state.batch_stats)),
                    jax.tree.leaves((raw_state.params, raw_state.batch_stats))):
        np.testing.assert_array_equal(a, b)


def ema_config(**ema):
    config = default_config()
    config.num_epochs = 2
    config.log_every_steps = 10
    config.ema.update(ema)
    return config


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def hand_metrics(run, dataset):
    """Accuracy and mean cross-entropy of the run's model on `dataset`, in NumPy."""
    images, labels = dataset.source.images, np.asarray(dataset.source.labels)
    logits = np.asarray(run.logits(run.preprocess(images)), np.float64)
    loss = np.mean(logsumexp(logits, axis=1) - logits[np.arange(len(labels)), labels])
    return float(np.mean(logits.argmax(1) == labels)), float(loss)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """Digits, LeNet-5, 2 epochs of 40 steps with the EMA on; the best checkpoint by the WORST
    val_ema_accuracy (best_mode min), so that it is epoch 1's, not the last state."""
    workdir = str(tmp_path_factory.mktemp("ema") / "run")
    config = ema_config(decay=0.99)
    config.checkpoint.best_metric, config.checkpoint.best_mode = "val_ema_accuracy", "min"
    state, history = train_and_evaluate(config, workdir, log=quiet)
    return workdir, config, state, history


@pytest.mark.slow
def test_the_loop_evaluates_the_average_beside_the_weights_and_selects_on_it(ema_run):
    workdir, config, state, history = ema_run
    first, last = history
    for record in history:
        assert {f"val_ema_{m}" for m in ("loss", "accuracy", "macro_f1")} <= record.keys()
        assert record["val_ema_loss"] != record["val_loss"]
    assert {"test_ema_accuracy", "test_ema_loss"} <= last.keys()
    assert "test_ema_accuracy" not in first
    assert records(workdir) == [{k: v for k, v in r.items() if k not in TIMING} for r in history]

    # val_ema_* is the averaged weights of the last checkpoint, evaluated here by hand
    train = get_dataset("digits", "train")
    _, val, _ = validation_split("digits", {}, train, config.validation_fraction,
                                 config.validation_seed)
    run = load_run(workdir, ema=True)
    accuracy, loss = hand_metrics(run, val)
    assert last["val_ema_accuracy"] == accuracy
    assert last["val_ema_loss"] == pytest.approx(loss, rel=1e-5)
    for a, b in zip(jax.tree.leaves(run.variables["params"]), jax.tree.leaves(state.ema["params"])):
        np.testing.assert_array_equal(a, b)  # the last checkpoint's average: the final state's

    final = json.load(open(os.path.join(workdir, "final_metrics.json")))
    test = get_dataset("digits", "test")
    assert final["ema"]["accuracy"] == last["test_ema_accuracy"] == hand_metrics(run, test)[0]
    assert final["ema"]["validation"]["accuracy"] == last["val_ema_accuracy"]
    assert "ema_accuracy" not in final["validation"]
    assert final["accuracy"] == last["test_accuracy"]
    # the best (here: worst) by val_ema_accuracy is epoch 1; its test figures are its average's
    assert first["val_ema_accuracy"] < last["val_ema_accuracy"]
    best = final["best"]
    assert (best["step"], best["weights"], best["selected_by"]) == (40, "ema", "val_ema_accuracy")
    assert best["accuracy"] == hand_metrics(load_run(workdir, checkpoint="40", ema=True), test)[0]
    assert best["accuracy"] != hand_metrics(load_run(workdir, checkpoint="40"), test)[0]
    # experiments.evaluate --ema: the same figure
    out = evaluate_cli.run_command(evaluate_cli.parse_args([workdir, "--ema"]))
    assert os.path.basename(out) == "latest_ema_test.json"
    assert json.load(open(out))["accuracy"] == last["test_ema_accuracy"]


@pytest.mark.slow
def test_a_run_stopped_and_resumed_ends_bit_identical_average_included(ema_run, tmp_path,
                                                                        monkeypatch):
    reference_dir, config, reference, history = ema_run
    workdir = str(tmp_path / "run")
    monkeypatch.setenv(TEST_SIGNAL_ENV, "50")  # SIGTERM in epoch 2: a checkpoint, then stop
    with pytest.raises(Preempted):
        train_and_evaluate(config, workdir, log=quiet)
    monkeypatch.delenv(TEST_SIGNAL_ENV)
    steps = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).steps()
    assert steps[0] == 40 and 50 <= steps[-1] < 80
    state, _ = train_and_evaluate(config, workdir, log=quiet)
    assert int(state.step) == 80
    for name in ("params", "batch_stats", "ema", "opt_state"):
        for a, b in zip(jax.tree.leaves(getattr(state, name)),
                        jax.tree.leaves(getattr(reference, name))):
            np.testing.assert_array_equal(a, b, err_msg=name)  # bit-identical, not close
    assert records(workdir) == records(reference_dir)
    saved, _ = restore_variables(workdir, ema=True)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(reference.ema["params"])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_config_without_ema_runs_as_before_and_the_average_changes_no_raw_figure(ema_run,
                                                                                   tmp_path):
    """A config written before config.ema existed (so: off) writes no average anywhere, and
    its raw figures are those the EMA run recorded beside its average."""
    _, config, _, ema_history = ema_run
    old = ema_config()
    old.checkpoint.best_mode = "min"
    del old["ema"]
    workdir = tmp_path / "old"
    state, history = train_and_evaluate(old, str(workdir), log=quiet)
    assert state.ema is None
    assert records(workdir) == [{k: v for k, v in r.items() if k not in TIMING} for r in history]
    assert not any("ema" in k for r in history for k in r)
    raw = [{k: v for k, v in r.items() if "_ema_" not in k and k not in TIMING}
           for r in ema_history]
    assert [r.keys() for r in records(workdir)] == [r.keys() for r in raw]
    for got, want in zip(records(workdir), raw):
        assert got == pytest.approx(want, rel=1e-6)
    final = json.load(open(workdir / "final_metrics.json"))
    assert "ema" not in final and "weights" not in final["best"]
    ckpt = Checkpointer(str(workdir / "checkpoints"), read_only=True)
    saved = ckpt._manager.restore(80, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    ckpt.close()
    assert set(saved["state"]) == {"step", "params", "batch_stats", "opt_state", "rng"}
    with pytest.raises(ValueError, match=r"holds no moving average of the weights: the run kept "
                                         r"none \(config.ema.decay=0\)"):
        restore_variables(str(workdir), ema=True)
    assert evaluate_cli.main([str(workdir), "--ema"]) == 2  # one line: error: ...


@pytest.mark.parametrize("change,match", [
    ({"ema.decay": 1.0}, r"config.ema.decay must be a number in \[0, 1\) .* got 1.0"),
    ({"ema.decay": -0.1}, r"config.ema.decay must be a number in \[0, 1\) .* got -0.1"),
    ({"ema": {"decay": 0.9, "warmup": "yes"}}, r"config.ema.warmup must be True or False, got "
                                               r"'yes'"),
    ({"checkpoint.best_metric": "val_ema_accuracy"},
     r"config.checkpoint.best_metric='val_ema_accuracy' selects on the moving average of the "
     r"weights, which this run does not keep \(config.ema.decay=0\): set config.ema.decay"),
    ({"early_stopping.patience": 2, "early_stopping.metric": "val_ema_loss"},
     r"config.early_stopping.metric='val_ema_loss' selects on the moving average"),
    ({"ema.decay": 0.999, "checkpoint.best_metric": "test_ema_accuracy"},
     r"test-set leakage.*'val_ema_accuracy'"),
    ({"ema.decay": 0.999, "checkpoint.best_metric": "val_ema_accurcy"},
     r"Unknown config.checkpoint.best_metric 'val_ema_accurcy'. Valid choices: .*val_ema_accuracy"),
])
def test_bad_ema_settings_fail_clearly(change, match):
    config = default_config()
    for key, value in change.items():
        if isinstance(value, dict):
            config[key] = ml_collections.ConfigDict(value)
        else:
            section, name = key.split(".")
            config[section][name] = value
    with pytest.raises(ValueError, match=match) as error:
        validate_config(config)
    assert "\n" not in str(error.value)


def test_good_ema_settings_validate():
    config = default_config()
    config.ema.decay = 0.9999
    config.checkpoint.best_metric = "val_ema_accuracy"
    config.early_stopping.metric, config.early_stopping.patience = "val_ema_loss", 3
    validate_config(config)
    del config["ema"]  # a config written before config.ema: off
    config.checkpoint.best_metric, config.early_stopping.metric = "val_accuracy", "val_loss"
    validate_config(config)


def test_a_run_saved_before_config_ema_existed_resumes_with_it_off():
    saved = default_config().to_dict()
    del saved["ema"]  # config.json / checkpoint of a run made before config.ema
    check_same_run(saved, default_config().to_dict(), "runs/old")
    on = default_config()
    on.ema.decay = 0.999
    with pytest.raises(ValueError, match=r"its config differs in:\n  ema.decay: 0.0 -> 0.999\nUse"):
        check_same_run(saved, on.to_dict(), "runs/old")
