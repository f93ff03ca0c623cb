"""Semantic segmentation on the shared core: whole-set metrics equal scikit-learn's over the
flattened pixels (ignored pixels, padding and absent classes included); the losses equal
NumPy references; transforms keep image and mask aligned; the folder and membrane loaders;
bad input refused before compute; a run end to end; the step under `mesh` on 8 devices equals
one device; kill -9 and resume ends bit-identical."""

import functools
import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from cnn_jax.config import default_config
from cnn_jax.data import get_dataset
from cnn_jax.data.transforms import make_preprocess
from cnn_jax.metrics import add_counts
from cnn_jax.models import MODELS, ModelEntry
from cnn_jax.tasks import segmentation
from cnn_jax.train import train_and_evaluate
from cnn_jax.tasks.segmentation import predict_folder
from cnn_jax.train.checkpoint import restore_variables
from experiments.report import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "helpers"))
from seg_net import TinySegNet  # noqa: E402

MEMBRANE = os.path.join(ROOT, "..", "shared", "data", "membrane")
TIMEOUT = 300


# ---------------------------------------------------------------- metrics and losses

def test_metrics_equal_scikit_learn_over_the_flattened_pixels():
    rng = np.random.default_rng(0)
    classes, ignore = 5, 255  # class 3 is never a label, class 4 never a label nor predicted
    counts, pixels_true, pixels_pred, losses = None, [], [], []
    fn = jax.jit(functools.partial(segmentation.eval_counts, ignore_value=ignore))
    for b in range(3):
        logits = rng.normal(size=(4, 6, 7, classes)).astype(np.float32)
        logits[..., 4] = -50.0
        labels = rng.choice([0, 1, 2], size=(4, 6, 7))
        labels[rng.random(labels.shape) < 0.2] = ignore
        weights = np.array([1, 1, 1, 0 if b == 2 else 1], np.float32)  # padding in the last
        counts = add_counts(counts, fn(logits, {"label": labels.astype(np.int32),
                                                "mask": weights}))
        keep = (labels != ignore) & (weights[:, None, None] > 0)
        pixels_true.append(labels[keep])
        pixels_pred.append(logits.argmax(-1)[keep])
        log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        losses.append(-np.take_along_axis(log_p, labels.clip(0, classes - 1)[..., None], -1)[..., 0][keep])
    out = segmentation.summarize(counts)
    y, p = np.concatenate(pixels_true), np.concatenate(pixels_pred)
    assert set(p) >= {3} and 3 not in set(y) and 4 not in set(y) | set(p)

    np.testing.assert_array_equal(out["confusion_matrix"],
                                  skm.confusion_matrix(y, p, labels=range(classes)))
    assert out["num_pixels"] == len(y) and out["num_examples"] == 11
    np.testing.assert_allclose(out["accuracy"], skm.accuracy_score(y, p), rtol=1e-12)
    present = sorted(set(y) | set(p))  # scikit-learn's labels: those in y_true or y_pred
    iou = skm.jaccard_score(y, p, labels=present, average=None)
    dice = skm.f1_score(y, p, labels=present, average=None)  # Dice is F1 over pixels
    np.testing.assert_allclose([out["per_class_iou"][c] for c in present], iou, rtol=1e-12)
    np.testing.assert_allclose([out["per_class_dice"][c] for c in present], dice, rtol=1e-12)
    assert out["per_class_iou"][4] is None and out["per_class_dice"][4] is None
    np.testing.assert_allclose(out["mean_iou"], skm.jaccard_score(y, p, average="macro"), rtol=1e-12)
    np.testing.assert_allclose(out["mean_dice"], skm.f1_score(y, p, average="macro"), rtol=1e-12)
    support = np.bincount(y, minlength=classes)[present]
    np.testing.assert_allclose(out["fw_iou"], (support / len(y) * iou).sum(), rtol=1e-12)
    np.testing.assert_allclose(out["loss"], np.concatenate(losses).mean(), rtol=1e-5)


def test_losses_equal_numpy_references():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 5, 4))
    labels[0, 0] = 255
    weights = np.array([0.5, 2.0, 1.0])
    valid = labels != 255
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    w = np.where(valid, weights[np.where(valid, labels, 0)], 0)  # torch's weighted mean
    batch = {"label": jnp.asarray(labels, jnp.int32)}
    np.testing.assert_allclose(segmentation.loss(logits, batch, class_weights=tuple(weights)),
                               (nll * w).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(segmentation.loss(logits, batch), nll[valid].mean(), rtol=1e-5)
    probs = np.exp(log_p) * valid[..., None]
    onehot = np.eye(3)[np.where(valid, labels, 0)] * valid[..., None]
    inter, denom = (probs * onehot).sum((0, 1, 2)), probs.sum((0, 1, 2)) + onehot.sum((0, 1, 2))
    dice = 1 - np.mean((2 * inter + 1) / (denom + 1))
    np.testing.assert_allclose(segmentation.loss(logits, batch, kind="dice"), dice, rtol=1e-5)
    np.testing.assert_allclose(segmentation.loss(logits, batch, kind="cross_entropy+dice"),
                               nll[valid].mean() + dice, rtol=1e-5)
    grads = jax.grad(lambda x: segmentation.loss(x, batch))(jnp.asarray(logits))
    assert np.all(np.asarray(grads)[0, 0] == 0)  # ignored pixels give no gradient


# ---------------------------------------------------------------- transforms

def blocks_batch(seed=0, n=4, size=32, block=8, classes=4):
    """A mask of class blocks and an image drawn from it: each pixel's value is its class."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes, (n, size // block, size // block))
    mask = np.repeat(np.repeat(coarse, block, 1), block, 2).astype(np.int32)
    return {"image": jnp.asarray(mask[..., None], jnp.float32), "label": jnp.asarray(mask)}


@pytest.mark.parametrize("spec", [
    "hflip(p=0.5)|random_crop(size=24, padding=4)", "center_crop(20)|pad(3)",
    "random_crop(padding=5)|hflip"])
def test_crops_flips_pads_move_the_mask_exactly_with_the_image(spec):
    batch = blocks_batch()
    fn = make_preprocess(spec, num_classes=4, targets=("label",), fill=255)
    for seed in range(3):
        out = fn(jax.random.key(seed), batch)
        image, mask = np.asarray(out["image"][..., 0]), np.asarray(out["label"])
        assert image.shape == mask.shape and mask.dtype == np.int32
        labelled = mask != 255
        np.testing.assert_array_equal(image[labelled], mask[labelled])  # the same pixels moved
        assert np.all(image[~labelled] == 0)  # padding: image zeros, mask the ignore value
        if "pad" in spec:
            assert (~labelled).any()


@pytest.mark.parametrize("spec", ["resize(40)", "resize((96, 80))",
                                  "random_resized_crop(48, scale=(0.3, 1.0))|hflip"])
def test_resampling_moves_the_mask_by_nearest_neighbour_with_the_image(spec):
    batch = blocks_batch(size=64, block=16)
    out = make_preprocess(spec, num_classes=4, targets=("label",))(jax.random.key(0), batch)
    image, mask = np.asarray(out["image"][..., 0]), np.asarray(out["label"])
    assert image.shape == mask.shape
    assert set(np.unique(mask)) <= {0, 1, 2, 3}  # never blended
    # Inside a block (the mask constant over a pixel's 7x7 neighbourhood) the bilinear image
    # equals the mask; a mask shifted or flipped against its image would not.
    pad = np.pad(mask, ((0, 0), (3, 3), (3, 3)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(pad, (7, 7), axis=(1, 2))
    inside = (windows.min((-1, -2)) == windows.max((-1, -2)))
    assert inside.mean() > 0.3
    np.testing.assert_allclose(image[inside], mask[inside], atol=1e-3)


def test_warp_equals_scipy_map_coordinates():
    from scipy import ndimage
    from cnn_jax.data.transforms import warp

    rng = np.random.default_rng(0)
    x = rng.random((2, 12, 10, 3)).astype(np.float32)
    mask = rng.integers(0, 4, (2, 12, 10, 1)).astype(np.int32)
    # Coordinates well inside and beyond the borders (reflected), off the half-pixel ties.
    rows = (np.arange(12)[:, None] + rng.uniform(-6, 6, (2, 12, 10))).astype(np.float32)
    cols = (np.arange(10)[None, :] + rng.uniform(-6, 6, (2, 12, 10))).astype(np.float32)
    out, out_mask = jax.jit(lambda x, m, r, c: (warp(x, r, c, 1), warp(m, r, c, 0)))(
        x, mask, rows, cols)
    for i in range(2):
        for k in range(3):
            expected = ndimage.map_coordinates(x[i, ..., k], [rows[i], cols[i]], order=1,
                                               mode="reflect")
            np.testing.assert_allclose(np.asarray(out)[i, ..., k], expected, atol=1e-5)
        expected = ndimage.map_coordinates(mask[i, ..., 0], [rows[i], cols[i]], order=0,
                                           mode="reflect")
        np.testing.assert_array_equal(np.asarray(out_mask)[i, ..., 0], expected)


def test_elastic_deforms_image_and_mask_together_by_sigma_pixels():
    batch = blocks_batch(size=64, block=16)
    fn = jax.jit(make_preprocess("elastic(grid=3, sigma=4.0)", num_classes=4,
                                 targets=("label",)))
    out = fn(jax.random.key(0), batch)
    image, mask = np.asarray(out["image"][..., 0]), np.asarray(out["label"])
    assert mask.dtype == np.int32 and set(np.unique(mask)) <= {0, 1, 2, 3}
    assert not np.array_equal(mask, np.asarray(batch["label"]))  # it moved
    pad = np.pad(mask, ((0, 0), (3, 3), (3, 3)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(pad, (7, 7), axis=(1, 2))
    inside = windows.min((-1, -2)) == windows.max((-1, -2))
    assert inside.mean() > 0.3
    np.testing.assert_allclose(image[inside], mask[inside], atol=1e-4)  # moved together

    # The displacement, read off an image whose value is its row: at the middle of a 3x3 grid
    # the bicubic field is the drawn vector itself, so its spread over examples is sigma.
    n, size, sigma = 256, 33, 5.0
    rows = np.broadcast_to(np.arange(size, dtype=np.float32)[None, :, None, None],
                           (n, size, size, 1))
    shifted = make_preprocess(f"elastic(sigma={sigma})", num_classes=1)(
        jax.random.key(1), {"image": jnp.asarray(rows)})["image"]
    dy = np.asarray(shifted)[:, size // 2, size // 2, 0] - size // 2
    assert 0.85 * sigma < dy.std() < 1.15 * sigma
    still = make_preprocess("elastic(sigma=0)", num_classes=1)(jax.random.key(1),
                                                               {"image": jnp.asarray(rows)})
    np.testing.assert_allclose(np.asarray(still["image"]), rows, atol=1e-5)


def test_normalize_touches_the_image_alone_and_mixup_is_refused():
    batch = blocks_batch()
    out = make_preprocess("normalize(mean=0.5, std=2.0)", num_classes=4, targets=("label",))(
        jax.random.key(0), batch)
    np.testing.assert_array_equal(out["label"], batch["label"])
    np.testing.assert_allclose(out["image"], (batch["image"] - 0.5) / 2.0)
    for spec in ("hflip|mixup(alpha=0.2)", "cutmix"):
        with pytest.raises(ValueError, match=r"cannot be used here.*Valid choices: .*hflip"):
            make_preprocess(spec, num_classes=4, targets=("label",),
                            refused=segmentation.REFUSED_TRANSFORMS)


# ---------------------------------------------------------------- data

def write_folder(root, n=10, size=16, palette=False, seed=0):
    """RGB images whose mask is their brightness thresholded into 3 classes, plus a few
    ignored pixels."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), np.uint8)
        mask = (image.mean(-1) // 86).astype(np.uint8)
        mask[0, :2] = 255
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        m = Image.fromarray(mask, mode="L")
        if palette:
            m = m.convert("P")
        m.save(root / "masks" / f"img{i}.png")
    (root / "classes.txt").write_text("dark\nmid\nbright\n")
    return root


@pytest.mark.parametrize("palette", [False, True])
def test_segmentation_folder_reads_masks_and_splits(tmp_path, palette):
    root = write_folder(tmp_path / "data", palette=palette)
    train = get_dataset("segmentation_folder", "train", root=str(root))
    test = get_dataset("segmentation_folder", "test", root=str(root))
    assert (len(train), len(test)) == (8, 2) and train.class_names == ("dark", "mid", "bright")
    for ds in (train, test):
        for i in range(len(ds)):
            ex = ds.source[i]
            want = (ex["image"].astype(float).mean(-1) // 86).astype(int)
            want[0, :2] = 255
            np.testing.assert_array_equal(ex["label"], want)


def test_segmentation_folder_bad_input(tmp_path):
    def fresh(name):
        return write_folder(tmp_path / name, n=3)

    root = fresh("no_mask")
    os.remove(root / "masks" / "img1.png")
    with pytest.raises(ValueError, match=r"image\(s\) in .*images without a mask in .*masks: img1.png"):
        get_dataset("segmentation_folder", "train", root=str(root))
    root = fresh("no_image")
    os.remove(root / "images" / "img2.png")
    with pytest.raises(ValueError, match=r"mask\(s\) in .*masks without an image in .*images: img2.png"):
        get_dataset("segmentation_folder", "train", root=str(root))
    root = fresh("size")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(root / "masks" / "img0.png")
    with pytest.raises(ValueError, match=r"masks/img0.png is 8x16 but its image .* is 16x16"):
        get_dataset("segmentation_folder", "train", root=str(root))
    root = fresh("values")
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(root / "masks" / "img1.png")
    with pytest.raises(ValueError, match=r"img1.png holds values \[7\].*0..2: dark, mid, bright"
                                         r".*ignore value 255"):
        get_dataset("segmentation_folder", "train", root=str(root))


@pytest.mark.skipif(not os.path.isdir(MEMBRANE), reason="../shared/data/membrane is absent")
def test_membrane_split_and_masks():
    train = get_dataset("membrane", "train", root=MEMBRANE)
    test = get_dataset("membrane", "test", root=MEMBRANE, image_size=128)
    assert (len(train), len(test)) == (24, 6) and train.class_names == ("membrane", "cell")
    assert train.image_shape == (512, 512, 1) and test.image_shape == (128, 128, 1)
    raw = np.asarray(Image.open(os.path.join(MEMBRANE, "label", "24.png")))
    np.testing.assert_array_equal(get_dataset("membrane", "test", root=MEMBRANE).source[0]["label"],
                                  raw >= 128)
    assert 0.7 < train.source.labels.mean() < 0.85  # cells cover most pixels


# ---------------------------------------------------------------- runs

@pytest.fixture
def tiny_seg(monkeypatch):
    monkeypatch.setitem(MODELS, "tiny_seg", ModelEntry(TinySegNet, (16, 16, 3)))


def seg_config(root, best="val_mean_iou", **changes):
    config = default_config()
    config.dataset = {"name": "segmentation_folder", "root": str(root)}
    config.model = {"name": "tiny_seg", "dtype": "float32", "width": 8}
    config.num_epochs, config.batch_size, config.eval_batch_size = 3, 4, 4
    config.optimizer.name, config.optimizer.learning_rate = "adam", 0.02
    config.train_transforms = "hflip|random_crop(padding=2)|normalize"
    config.eval_transforms = "normalize"
    config.checkpoint.best_metric = best
    for key, value in changes.items():
        config[key] = value
    return config


def test_a_segmentation_run_end_to_end(tmp_path, tiny_seg):
    root = write_folder(tmp_path / "data", n=20)
    state, history = train_and_evaluate(seg_config(root), str(tmp_path / "run"), log=lambda m: None)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    last = history[-1]
    for key in ("test_accuracy", "test_mean_iou", "test_mean_dice", "test_fw_iou", "test_loss",
                "train_accuracy"):
        assert 0 <= last[key] <= max(1, last["test_loss"]), key
    assert last["test_accuracy"] > 0.6 and "val_mean_iou" in history[0]
    final = json.load(open(tmp_path / "run" / "final_metrics.json"))
    assert final["num_pixels"] == 4 * (16 * 16 - 2)  # 4 test images, 2 ignored pixels each
    assert np.sum(final["confusion_matrix"]) == final["num_pixels"]
    assert final["class_names"] == ["dark", "mid", "bright"]

    written = write_report(str(tmp_path / "run"))  # the report draws the task's pictures
    assert {"segmentation_metrics.png", "predictions.png", "summary.md"} <= {
        os.path.basename(p) for p in written}
    assert "| test mean IoU |" in open(tmp_path / "run" / "report" / "summary.md").read()
    # predicted masks for a folder of images, as palette PNGs holding the classes
    masks = [p for p in predict_folder(str(tmp_path / "run"), str(root / "images"),
                                       str(tmp_path / "pred")) if "/masks/" in p]
    assert len(masks) == 20
    segment, _, _ = segmentation.segmenter(str(tmp_path / "run"))
    image = np.asarray(Image.open(root / "images" / "img3.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "pred" / "masks" / "img3.png")),
                                  segment(image[None])[0].argmax(-1))
    from experiments import predict  # the shared command, with segmentation's output function
    assert predict.main([str(tmp_path / "run"), str(root / "images"), "--out",
                         str(tmp_path / "cli")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cli" / "masks" / "img3.png")),
                                  segment(image[None])[0].argmax(-1))


def test_bad_combinations_are_refused_before_compute(tmp_path, tiny_seg):
    root = write_folder(tmp_path / "data", n=6)
    cases = [
        (dict(train_transforms="mixup(alpha=0.2)"), r"'mixup'.*cannot be used here.*segmentation"),
        (dict(label_smoothing=0.1), r"label_smoothing=0.1 is a classification option"),
        (dict(model={"name": "resnet18_cifar", "dtype": "float32", "width": 4}),
         r"resnet18_cifar.*logits of shape \(2, 3\).*segmentation needs \(N, 16, 16, 3\).*'unet'"),
        (dict(task="classification", best="val_accuracy"), r"label of shape \(16, 16\).*config.task='segmentation'"),
        (dict(task="detection"), r"Unknown task 'detection'.*classification, segmentation"),
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            train_and_evaluate(seg_config(root, **changes), str(tmp_path / "never"))
    config = seg_config(root)
    config.checkpoint.best_metric = "val_macro_f1"
    with pytest.raises(ValueError, match=r"Unknown config.checkpoint.best_metric 'val_macro_f1'.*"
                                         r"val_mean_iou"):
        train_and_evaluate(config, str(tmp_path / "never"))
    config = default_config()
    config.task = "segmentation"
    with pytest.raises(ValueError, match=r"'digits'.*\(H, W\) mask.*got a label of shape \(\)"):
        train_and_evaluate(config, str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_segmentation_step_under_mesh_on_8_devices_equals_one_device(tmp_path):
    helper = os.path.join(ROOT, "tests", "helpers", "seg_parallel_run.py")
    out = {}
    for mode, devices in (("none", 1), ("mesh", 8)):
        result = subprocess.run([sys.executable, helper, mode, str(tmp_path / f"{mode}.npz"),
                                 "--devices", str(devices)], cwd=ROOT, capture_output=True,
                                text=True, timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr[-3000:]
        out[mode] = dict(np.load(tmp_path / f"{mode}.npz"))
    one, mesh = out["none"], out["mesh"]
    assert one.keys() == mesh.keys() and any(k.startswith("batch_stats/") for k in one)
    for key in one:
        if key in ("count/confusion", "count/count"):
            np.testing.assert_array_equal(one[key], mesh[key], err_msg=key)
        else:
            err = np.linalg.norm(one[key] - mesh[key]) / max(np.linalg.norm(one[key]), 1e-12)
            assert err <= 1e-5, f"{key}: relative difference {err:.2e}"
    assert one["count/examples"] == 13  # 3 padded examples count for nothing


SEG_RUN = ("--config", os.path.join(ROOT, "tests", "helpers", "seg_config.py"),
           "--config.num_epochs=3", "--config.checkpoint.every_steps=2",
           "--config.log_every_steps=2")


def seg_train(root, workdir, popen=False):
    args = [sys.executable, os.path.join(ROOT, "tests", "helpers", "seg_train.py"), *SEG_RUN,
            f"--config.dataset.root={root}", "--workdir", str(workdir)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    if popen:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.slow
def test_sigkill_and_resume_of_a_segmentation_run_ends_bit_identical(tmp_path):
    root = write_folder(tmp_path / "data", n=40)  # 32 train: 8 steps an epoch, 24 in all
    reference = seg_train(root, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    workdir = tmp_path / "killed"
    proc = seg_train(root, workdir, popen=True)
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        done = [int(os.path.basename(p)) for p in glob.glob(str(workdir / "checkpoints" / "*"))
                if os.path.basename(p).isdigit()]
        if done and max(done) >= 10:
            break
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = seg_train(root, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from the checkpoint of step" in result.stdout
    a, _ = restore_variables(str(tmp_path / "reference"))
    b, _ = restore_variables(str(workdir))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)  # bit-identical
    timing = ("train_images_per_second", "epoch_seconds")

    def records(path):
        return [{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in open(path)]
    assert records(workdir / "metrics.jsonl") == records(tmp_path / "reference" / "metrics.jsonl")


def test_pets_masks_through_tfds_data_source():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        train = get_dataset("oxford_iiit_pet_seg", "train", image_size=32)
        assert len(train) == 6 and train.class_names == ("background", "pet")
        from cnn_jax.tasks import task_name
        config = default_config()
        config.dataset.name = "oxford_iiit_pet_seg"
        assert task_name(config) == "segmentation"
        segmentation.check_dataset(train, "pets")  # masks of the image's size, valid values
        ex = train.source[2]
        assert ex["image"].shape == (32, 32, 3) and ex["label"].shape == (32, 32)
        assert set(np.unique(ex["label"])) <= {0, 1, 255}
    from cnn_jax.data.segmentation_tfds import TRIMAP_TO_CLASS, mask_center_crop
    np.testing.assert_array_equal(TRIMAP_TO_CLASS[[1, 2, 3, 0]], [1, 0, 255, 255])
    mask = np.repeat(np.repeat(np.arange(12).reshape(3, 4), 10, 0), 10, 1)  # 30x40 blocks
    crop = mask_center_crop(mask, (15, 15))  # scale 0.5 -> 15x20, the centre 15x15
    np.testing.assert_array_equal(crop, mask[::2, ::2][:, 2:17])
