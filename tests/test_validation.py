"""Model selection on the validation split, never on the test split: the carved split's
properties, the loaders' own validation splits (or MissingSplit), the best checkpoint, early
stopping and the sweep's ranking where validation and test disagree, the run that has no
validation, and the report of an unfinished run.

Validation and test are made to disagree on purpose: the "crafted" dataset's validation split
is the digits' test images with every label shifted by one ((y + 1) mod 10), so the better a
model gets on test, the worse it gets on validation (its validation loss rises). Whatever
follows validation then picks the worst model on test.
"""

import json
import os
import re

import numpy as np
import pytest

from cnn_jax import data as data_lib
from cnn_jax.config import default_config
from cnn_jax.data import MissingSplit, from_arrays, get_dataset
from cnn_jax.data.splits import IndexedSource, stratified_split, take, validation_split
from cnn_jax.train import selection, train_and_evaluate
from cnn_jax.train.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the carved split ---------------------------------------------------------------------

def test_stratified_split_is_disjoint_stratified_and_seeded_on_its_own():
    labels = np.repeat(np.arange(5), [40, 21, 7, 2, 1])  # uneven classes, one of size 1
    np.random.default_rng(3).shuffle(labels)
    train, val = stratified_split(labels, 0.25, seed=7)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    counts = np.bincount(labels[val], minlength=5)
    # round(0.25 n) per class: 10, 5 (5.25), 2 (1.75), 1 (0.5 rounds up), 0 (a class keeps one)
    np.testing.assert_array_equal(counts, [10, 5, 2, 1, 0])
    again_train, again_val = stratified_split(labels, 0.25, seed=7)
    np.testing.assert_array_equal(val, again_val)
    np.testing.assert_array_equal(train, again_train)
    np.random.seed(123)  # global NumPy state plays no part
    assert not np.array_equal(stratified_split(labels, 0.25, seed=8)[1], val)
    np.testing.assert_array_equal(stratified_split(labels, 0.25, seed=7)[1], val)


class _Stop(Exception):
    pass


def test_validation_is_carved_from_train_and_independent_of_the_run_seed(monkeypatch):
    seen = []

    def spy(name, options, train, fraction, seed):
        result = validation_split(name, options, train, fraction, seed)
        seen.append(result)
        raise _Stop  # enough: what the loop would train and select on

    monkeypatch.setattr("cnn_jax.train.loop.validation_split", spy)
    for seed in (0, 1):
        config = default_config()
        config.seed = seed
        with pytest.raises(_Stop):
            train_and_evaluate(config, None, log=lambda s: None)
    (train_a, val_a, where), (train_b, val_b, _) = seen
    assert "10% of train, stratified, validation_seed=0" == where
    np.testing.assert_array_equal(val_a.source.labels, val_b.source.labels)
    np.testing.assert_array_equal(val_a.source.images, val_b.source.images)
    full = get_dataset("digits", "train")
    assert len(train_a) + len(val_a) == len(full) == 1437 and len(val_a) == 145
    np.testing.assert_array_equal(np.bincount(val_a.source.labels),
                                  [int(0.1 * n + 0.5) for n in np.bincount(full.source.labels)])
    # every validation image is a training image of the full split, none left in train
    rows = {img.tobytes() for img in full.source.images}
    val_rows = {img.tobytes() for img in val_a.source.images}
    assert val_rows <= rows and not val_rows & {img.tobytes() for img in train_a.source.images}
    assert val_a.mean == full.mean  # normalised alike


def test_take_keeps_arrays_in_memory_and_indexes_other_sources():
    images = np.arange(6 * 2 * 2 * 1, dtype=np.uint8).reshape(6, 2, 2, 1)
    dataset = from_arrays(images, np.array([0, 1, 0, 1, 0, 1]), ("a", "b"))
    part = take(dataset, np.array([1, 4]))
    assert len(part) == 2 and part.class_names == ("a", "b")
    np.testing.assert_array_equal(part.source.images, images[[1, 4]])
    indexed = IndexedSource(dataset.source, np.array([5, 0]))
    assert [e["label"] for e in indexed.__getitems__([0, 1])] == [1, 0]
    np.testing.assert_array_equal(indexed[1]["image"], images[0])


# --- own validation splits, or MissingSplit -------------------------------------------------

def test_loaders_without_a_validation_split_raise_missing_split():
    import tensorflow_datasets as tfds
    with pytest.raises(MissingSplit):
        get_dataset("digits", "validation")
    with pytest.raises(MissingSplit):
        get_dataset("subset", "validation", classes="0-4")
    with tfds.testing.mock_data(num_examples=6):
        with pytest.raises(MissingSplit, match="no validation split"):
            get_dataset("mnist", "validation")
        with pytest.raises(MissingSplit, match="is the test split here"):
            get_dataset("imagenette", "validation")  # TFDS's validation is our test split


def test_tfds_own_validation_split_is_used(monkeypatch):
    import tensorflow_datasets as tfds
    from cnn_jax.data import tfds_datasets

    opened = []
    real_open = tfds_datasets.TFDSSource._open

    def open_with_splits(self):
        source = real_open(self)
        splits = source.dataset_info.splits
        splits.update({k: None for k in ("train", "validation", "test") if k not in splits})
        opened.append(self.split)
        return source

    with tfds.testing.mock_data(num_examples=6):
        monkeypatch.setattr(tfds_datasets.TFDSSource, "_open", open_with_splits)
        val = get_dataset("cifar10", "validation", in_memory=False)
        assert val.source.split == "validation" and len(val) == 6
        assert len(val.source.labels()) == 6  # the labels alone, for carving


def test_the_dataset_own_split_is_preferred_to_carving(monkeypatch):
    digits = get_dataset("digits", "train")
    own = take(digits, np.arange(10))

    def loader(split, **options):
        return own if split == "validation" else digits

    monkeypatch.setitem(data_lib.DATASETS, "with_val", loader)
    train, val, where = validation_split("with_val", {}, digits, 0.1, 0)
    assert val is own and train is digits and where == "the dataset's own split"
    train, val, where = validation_split("digits", {}, digits, 0.0, 0)
    assert val is None and train is digits


# --- selection follows validation where validation and test disagree ----------------------

def _crafted(split, **options):
    if split == "validation":
        test = get_dataset("digits", "test")
        return from_arrays(test.source.images, (test.source.labels + 1) % 10, test.class_names,
                           "crafted", test.mean, test.std)
    return get_dataset("digits", split)


@pytest.fixture(scope="module")
def crafted_run(tmp_path_factory):
    """Early stopping on the crafted validation loss (patience 1) with the test split
    evaluated every epoch: best on validation is epoch 1, on test a later one."""
    mp = pytest.MonkeyPatch()
    mp.setitem(data_lib.DATASETS, "crafted", _crafted)
    workdir = str(tmp_path_factory.mktemp("crafted"))
    config = default_config()
    config.dataset.name = "crafted"
    config.num_epochs = 5
    config.eval_test_every_epoch = True
    config.checkpoint.best_metric, config.checkpoint.best_mode = "val_loss", "min"
    config.checkpoint.keep = 1
    config.early_stopping.metric = "val_loss"
    config.early_stopping.patience = 1
    lines = []
    _, history = train_and_evaluate(config, workdir, log=lines.append)
    yield config, workdir, history, lines
    mp.undo()


def test_best_checkpoint_and_early_stopping_follow_validation(crafted_run):
    config, workdir, history, lines = crafted_run
    val_loss = [r["val_loss"] for r in history]
    test_acc = [r["test_accuracy"] for r in history]
    assert int(np.argmax(test_acc)) != int(np.argmin(val_loss)) == 0  # they disagree
    # early stopping: epoch 2 did not improve on epoch 1 (patience 1) -> stopped after it
    assert val_loss[1] > val_loss[0] and len(history) == 2
    assert any("Early stopping after epoch 2" in line for line in lines)
    final = json.load(open(os.path.join(workdir, "final_metrics.json")))
    assert final["stopped_early"] and final["epoch"] == 2 and final["checkpoint"] == "last"
    assert final["accuracy"] == test_acc[1]
    best = final["best"]
    assert best["epoch"] == 1 and best["selected_by"] == "val_loss"
    assert best["val_loss"] == val_loss[0]
    # the best checkpoint was restored and evaluated: epoch 1's own test figures, not the last's
    assert best["accuracy"] == test_acc[0] != test_acc[1]
    assert best["loss"] == pytest.approx(history[0]["test_loss"], rel=1e-6)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True,
                        best_metric="val_loss", best_mode="min")
    assert ckpt.best_step() == history[0]["step"]
    ckpt.close()


def test_a_run_stopped_early_is_not_trained_further(crafted_run):
    config, workdir, history, _ = crafted_run
    mp = pytest.MonkeyPatch()
    mp.setitem(data_lib.DATASETS, "crafted", _crafted)
    try:
        lines = []
        _, again = train_and_evaluate(config, workdir, log=lines.append)
    finally:
        mp.undo()
    assert again == history and not any(line.startswith("epoch ") for line in lines)


def test_report_of_an_unfinished_run_says_so(crafted_run, tmp_path):
    import shutil
    from experiments.report import write_report
    _, workdir, history, _ = crafted_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    os.remove(copy / "final_metrics.json")
    written = write_report(str(copy))
    summary = open(copy / "report" / "summary.md").read()
    assert str(copy / "report" / "summary.md") in written
    assert "**Unfinished run**" in summary and f"{len(history)} of 5 epochs" in summary
    assert f"| validation loss | {history[-1]['val_loss']:.4f} |" in summary
    assert "Best checkpoint, selected on val_loss" in summary and "at epoch 1 " in summary


def test_sweep_ranks_on_validation_not_on_test(monkeypatch, tmp_path, capsys):
    from experiments import sweep
    monkeypatch.setitem(data_lib.DATASETS, "crafted", _crafted)
    argv = ["--config", os.path.join(ROOT, "experiments/configs/lenet5_digits.py"),
            "--workdir", str(tmp_path), "--param", "optimizer.learning_rate=0.0001,0.05",
            "--config.dataset.name=crafted", "--config.num_epochs=1", "--metric", "val_loss",
            "--mode", "min"]
    assert sweep.main(argv) == 0
    final = {d: json.load(open(tmp_path / d / "final_metrics.json"))["accuracy"]
             for d in os.listdir(tmp_path) if d.startswith("00")}
    rows = [line for line in open(tmp_path / "sweep.md") if line.startswith("| 00")]
    ranked = [row.split("|")[1].strip() for row in rows]
    assert ranked == ["000_learning_rate=0.0001", "001_learning_rate=0.05"]
    assert final[ranked[1]] > final[ranked[0]]  # test would have ranked them the other way
    assert f"its test accuracy (last checkpoint): {final[ranked[0]]:.2%}" in open(
        tmp_path / "sweep.md").read()


def test_sweep_refuses_to_rank_on_test_unless_told(tmp_path, capsys):
    from experiments import sweep
    argv = ["--config", os.path.join(ROOT, "experiments/configs/lenet5_digits.py"),
            "--workdir", str(tmp_path / "s"), "--param", "batch_size=16,32",
            "--metric", "test_accuracy"]
    assert sweep.main(argv) == 2
    error = capsys.readouterr().err
    assert "test-set leakage" in error and "--allow_test_leakage" in error
    assert "val_accuracy" in error and not (tmp_path / "s").exists()


# --- no validation -------------------------------------------------------------------------

def test_without_validation_nothing_is_selected_and_it_says_so(tmp_path):
    config = default_config()
    config.num_epochs = 1
    config.validation_fraction = 0.0
    lines = []
    _, history = train_and_evaluate(config, str(tmp_path), log=lines.append)
    assert any("selects nothing on held-out data" in line for line in lines)
    assert not any(k.startswith("val_") for k in history[0]) and "test_accuracy" in history[0]
    final = json.load(open(tmp_path / "final_metrics.json"))
    assert final["best"] is None and final["validation"] == {}
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), read_only=True,
                        best_metric="val_accuracy")
    assert ckpt.best_step() is None
    ckpt.close()


@pytest.mark.parametrize("key,value,match", [
    ("checkpoint.best_metric", "test_accuracy", "test-set leakage.*'val_accuracy'"),
    ("early_stopping.metric", "test_loss", "config.early_stopping.metric='test_loss' would"),
    ("checkpoint.best_metric", "val_acc", "Unknown config.checkpoint.best_metric 'val_acc'"),
    ("validation_fraction", 1.0, r"validation_fraction must be in \[0, 1\)"),
    ("early_stopping.patience", -1, "patience must be an integer >= 0"),
])
def test_bad_selection_config_fails_before_compute(key, value, match):
    from cnn_jax.config import set_value
    config = default_config()
    config.early_stopping.patience = 2
    set_value(config, key, value)
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(config, None, log=lambda s: None)


def test_early_stopping_without_validation_is_an_error():
    config = default_config()
    config.validation_fraction = 0.0
    config.early_stopping.patience = 2
    with pytest.raises(ValueError, match="needs a validation split.*validation_fraction=0"):
        train_and_evaluate(config, None, log=lambda s: None)


# --- early stopping's rule -----------------------------------------------------------------

@pytest.mark.parametrize("values,metric,patience,min_delta,expected", [
    ([0.5, 0.6, 0.6, 0.59, 0.7], "val_accuracy", 2, 0.0, 4),   # 3 and 4 do not beat 0.6
    ([0.5, 0.6, 0.6, 0.61, 0.6], "val_accuracy", 2, 0.0, None),  # 0.61 resets the count
    ([0.5, 0.6, 0.6, 0.605, 0.6], "val_accuracy", 2, 0.01, 4),  # +0.005 is within min_delta
    ([0.9, 0.8, 0.85, 0.7], "val_loss", 1, 0.0, 3),            # losses: lower is better
    ([0.9, 0.8, 0.85, 0.7], "val_loss", 0, 0.0, None),         # patience 0: off
])
def test_early_stop_epoch(values, metric, patience, min_delta, expected):
    history = [{"epoch": i + 1, metric: v} for i, v in enumerate(values)]
    assert selection.early_stop_epoch(history, metric, patience, min_delta) == expected


# --- the README's quick start -------------------------------------------------------------

@pytest.mark.slow
def test_quick_start_gives_the_readme_figure(tmp_path):
    """The default experiment, run as the README's Quick start runs it, ends at the validation
    and test accuracy the README states (within one image: other CPUs may round differently)."""
    from cnn_jax.config import load_config_file
    readme = open(os.path.join(ROOT, "README.md")).read()
    quick = readme.split("## Quick start")[1].split("\n## ")[0]
    match = re.search(r"([\d.]+)% validation\s+accuracy\s+\((\d+) images\)\s+and\s+([\d.]+)%"
                      r"\s+test\s+accuracy\s+\((\d+) images\)", quick)
    assert match, "the Quick start must state the run's validation and test accuracy"
    val_pct, num_val, test_pct, num_test = (float(match[1]), int(match[2]), float(match[3]),
                                            int(match[4]))
    config = load_config_file(os.path.join(ROOT, "experiments/configs/lenet5_digits.py"))
    _, history = train_and_evaluate(config, str(tmp_path), log=lambda s: None)
    last = history[-1]
    assert (last["val_num_examples"], last["test_num_examples"]) == (num_val, num_test)
    print(f"quick start: validation {last['val_accuracy']:.2%}, test {last['test_accuracy']:.2%}")
    assert abs(100 * last["val_accuracy"] - val_pct) <= 100 / num_val + 0.01
    assert abs(100 * last["test_accuracy"] - test_pct) <= 100 / num_test + 0.01
