"""experiments.evaluate and experiments.predict against scikit-learn's metrics and the model
applied by hand, on a LeNet-5 digits run with two checkpoints (random weights: the commands
must reproduce whatever the weights give)."""

import csv
import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import special
from sklearn import metrics as skm

from cnn_jax.data import get_dataset
from cnn_jax.models import get_model
from cnn_jax.train.checkpoint import Checkpointer
from experiments import evaluate, predict
from experiments.configs import lenet5_digits

MODEL = dict(num_classes=10, act="relu", pool="max")


def random_variables(seed):
    shapes = jax.eval_shape(get_model("lenet5", **MODEL).init, jax.random.key(0),
                            np.zeros((1, 32, 32, 1), np.float32))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), shapes)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir with config.json and checkpoints 1 (weights A, the best by its best_metric)
    and 2 (weights B, the latest), as the training loop saves them."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = lenet5_digits.get_config().to_dict()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config, f)
    weights = {1: random_variables(1), 2: random_variables(2)}
    best = config["checkpoint"]["best_metric"]  # an accuracy: the higher the better
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), best_metric=best)
    for step, accuracy in ((1, 0.9), (2, 0.5)):
        ckpt.save(step, {"params": weights[step]["params"], "batch_stats": {}},
                  {"config": config}, metrics={best: accuracy})
    ckpt.wait()
    ckpt.close()
    return workdir, weights


def logits_by_hand(variables, images):
    """images: (N, 32, 32, 1) in [0, 1]; the digits config has no eval transforms."""
    return np.asarray(get_model("lenet5", **MODEL).apply(variables, images, train=False))


def sklearn_metrics(labels, logits):
    predicted = logits.argmax(-1)
    return {"accuracy": skm.accuracy_score(labels, predicted),
            "loss": -special.log_softmax(logits.astype(np.float64), -1)[
                np.arange(len(labels)), labels].mean(),  # sklearn's log_loss clips at 1e-15
            "top5_accuracy": skm.top_k_accuracy_score(labels, logits, k=5, labels=range(10)),
            "macro_f1": skm.f1_score(labels, predicted, average="macro", zero_division=0),
            "macro_precision": skm.precision_score(labels, predicted, average="macro",
                                                   zero_division=0),
            "macro_recall": skm.recall_score(labels, predicted, average="macro",
                                             zero_division=0),
            "confusion_matrix": skm.confusion_matrix(labels, predicted,
                                                     labels=range(10)).tolist()}


def check_against(record, expected):
    assert record["confusion_matrix"] == expected.pop("confusion_matrix")
    for key, value in expected.items():
        assert record[key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.parametrize("checkpoint, step", [("latest", 2), ("best", 1)])
def test_evaluate_a_checkpoint_on_the_test_split(run, tmp_path, checkpoint, step, capsys):
    workdir, weights = run
    out = str(tmp_path / "metrics.json")
    assert evaluate.main([workdir, "--checkpoint", checkpoint, "--out", out,
                          "--batch_size", "100"]) == 0  # 360 images: a padded last batch
    with open(out) as f:
        record = json.load(f)
    test = get_dataset("digits", "test")
    labels = test.source.labels
    expected = sklearn_metrics(labels, logits_by_hand(weights[step], test.source.images))
    assert record["num_examples"] == 360 and record["checkpoint"] == checkpoint
    check_against(record, expected)
    printed = capsys.readouterr().out
    assert f"accuracy {record['accuracy']:.2%}" in printed and "confusion matrix" in printed
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary file left


def digit_pngs(folder, count=12, by_class=False):
    """Test digits as 32x32 grayscale PNGs (the run's size: no resizing); their labels."""
    test = get_dataset("digits", "test")
    images = np.round(test.source.images[:count, ..., 0] * 255).astype(np.uint8)
    labels = test.source.labels[:count]
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        sub = os.path.join(folder, str(label)) if by_class else folder
        os.makedirs(sub, exist_ok=True)
        paths.append(os.path.join(sub, f"digit{i:02d}.png"))
        Image.fromarray(image).save(paths[-1])
    return images[..., None].astype(np.float32) / 255, labels, paths


def test_evaluate_an_image_folder(run, tmp_path):
    workdir, weights = run
    images, labels, _ = digit_pngs(str(tmp_path / "images"), by_class=True)
    out = str(tmp_path / "metrics.json")
    assert evaluate.main([workdir, "--images_dir", str(tmp_path / "images"), "--out", out]) == 0
    with open(out) as f:
        record = json.load(f)
    assert record["num_examples"] == len(labels)
    check_against(record, sklearn_metrics(labels, logits_by_hand(weights[2], images)))


def test_predict_writes_the_top_k_and_pictures(run, tmp_path):
    workdir, weights = run
    folder = str(tmp_path / "images")
    images, _, paths = digit_pngs(folder, count=5)
    os.makedirs(os.path.join(folder, "more"))
    os.replace(paths[4], os.path.join(folder, "more", "last.png"))  # sub-folders are read too
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(os.path.join(folder, ".hidden.png"))
    out = str(tmp_path / "out")
    assert predict.main([workdir, folder, "--checkpoint", "best", "--top_k", "3", "--out", out,
                         "--pictures"]) == 0
    with open(os.path.join(out, "predictions.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "class_1", "probability_1", "class_2", "probability_2",
                       "class_3", "probability_3"]
    names = [os.path.basename(p) for p in paths[:4]] + [os.path.join("more", "last.png")]
    assert sorted(r[0] for r in rows[1:]) == sorted(names)
    order = [names.index(r[0]) for r in rows[1:]]
    probs = np.asarray(jax.nn.softmax(logits_by_hand(weights[1], images[order]).astype(
        np.float64)))
    for row, p in zip(rows[1:], probs):
        top = np.argsort(-p)[:3]
        assert row[1::2] == [str(c) for c in top]
        # float32, compiled by XLA or not: equal to about 1e-6
        np.testing.assert_allclose([float(v) for v in row[2::2]], p[top], atol=2e-5)
    pictures = sorted(os.path.relpath(os.path.join(d, f), os.path.join(out, "pictures"))
                      for d, _, files in os.walk(os.path.join(out, "pictures")) for f in files)
    assert pictures == sorted(os.path.splitext(n)[0] + ".png" for n in names)


def test_bad_input_is_one_line(run, tmp_path, capsys):
    workdir, _ = run
    digit_pngs(str(tmp_path / "images"), count=2)
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    task = tmp_path / "detection"
    os.makedirs(task)
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    with open(task / "config.json", "w") as f:
        json.dump({**config, "task": "detection"}, f)
    os.symlink(os.path.join(workdir, "checkpoints"), task / "checkpoints")
    cases = [(evaluate.main, [workdir, "--checkpoint", "7"], "no checkpoint at step 7"),
             (evaluate.main, [workdir, "--checkpoint", "newest"], "latest, best"),
             (evaluate.main, [workdir, "--split", "dev"], "Unknown split 'dev'"),
             (evaluate.main, [workdir, "--images_dir", str(tmp_path / "bad")], "unknown: cat"),
             (evaluate.main, [str(tmp_path)], "config.json not found"),
             (predict.main, [workdir, str(tmp_path / "none")], "does not exist"),
             (predict.main, [workdir, str(tmp_path / "bad")], "No images"),
             (predict.main, [str(task), str(tmp_path / "images")], "task 'detection'")]
    damaged = tmp_path / "damaged"
    shutil.copytree(workdir, damaged)
    for path in (damaged / "checkpoints" / "2" / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":  # the arrays' data files, cut short
            path.write_bytes(path.read_bytes()[:100])
    cases.append((evaluate.main, [str(damaged)], "may be damaged"))
    for main, args, words in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and "Traceback" not in err, err


def test_restore_variables_checks_the_checksum(run, tmp_path):
    """A checkpoint whose arrays are not the ones it was saved with is refused, not used: here
    checkpoint 2's arrays are replaced by checkpoint 1's."""
    from cnn_jax.train.checkpoint import CheckpointError, restore_variables
    workdir, weights = run
    variables, _ = restore_variables(workdir, step=2)
    np.testing.assert_array_equal(variables["params"]["C1"]["conv"]["kernel"],
                                  weights[2]["params"]["C1"]["conv"]["kernel"])
    swapped = tmp_path / "swapped"
    shutil.copytree(workdir, swapped)
    shutil.rmtree(swapped / "checkpoints" / "2" / "state")
    shutil.copytree(swapped / "checkpoints" / "1" / "state", swapped / "checkpoints" / "2" / "state")
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        restore_variables(str(swapped), step=2)
