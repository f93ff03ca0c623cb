"""Semantic segmentation: one class per pixel.

Batch: {'image': (N, H, W, C), 'label': (N, H, W) int32}: the mask, with pixels of value
`config.segmentation.ignore_value` (255 by default) left out of loss and metrics. (Like
scenic, the mask is the batch's 'label'; 'mask' stays the (N,) padding weight of evaluation
batches, as for every task.) Geometric transforms move the mask with the image, by nearest
neighbour; mixup and cutmix are refused.

Loss: per-pixel softmax cross-entropy averaged over the labelled pixels (weighted by
`class_weights` if given, as torch's `CrossEntropyLoss(weight=..., ignore_index=255)`), or
the soft Dice loss, or their sum. Evaluation: a confusion matrix over every labelled pixel of
the set (padding masked), summarized into pixel accuracy, per-class and mean IoU and Dice,
and frequency-weighted IoU (`cnn_jax.metrics.segmentation_summary`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax import metrics as metrics_lib

METRICS = ("accuracy", "loss", "mean_iou", "mean_dice", "fw_iou")
LOSSES = ("cross_entropy", "dice", "cross_entropy+dice")
REFUSED_TRANSFORMS = {"mixup": "it blends two images, so no pixel has one class",
                      "cutmix": "it is not implemented for masks"}
CLASSIFICATION_ONLY = ("label_smoothing",)


def targets(image_shape: tuple[int, ...]) -> dict:
    return {"label": (tuple(image_shape[:2]), jnp.int32)}


def options(config) -> dict:
    seg = config.segmentation
    return {"ignore_value": seg.ignore_value, "class_weights": tuple(seg.class_weights),
            "kind": seg.loss}


def check_config(config) -> None:
    seg = config.segmentation
    if seg.loss not in LOSSES:
        raise ValueError(f"Unknown config.segmentation.loss {seg.loss!r}. "
                         f"Valid choices: {', '.join(LOSSES)}.")
    if config.label_smoothing:
        raise ValueError(f"config.label_smoothing={config.label_smoothing} is a classification "
                         "option; segmentation does not take it (set it to 0).")
    if not isinstance(seg.ignore_value, int) or seg.ignore_value < 0:
        raise ValueError(f"config.segmentation.ignore_value must be a non-negative int, got "
                         f"{seg.ignore_value!r}.")
    if any(not w >= 0 for w in seg.class_weights):
        raise ValueError(f"config.segmentation.class_weights must be non-negative, got "
                         f"{tuple(seg.class_weights)}.")


def check_dataset(dataset, where: str, ignore_value: int = 255, num_checked: int = 8) -> None:
    """The first `num_checked` examples: a (H, W) mask the size of the image, values in
    [0, classes) or the ignore value. (Loaders check every example as they load.)"""
    for i in range(min(len(dataset), num_checked)):
        example = dataset.source[i]
        check_mask(np.asarray(example["image"]), np.asarray(example["label"]),
                   dataset.num_classes, ignore_value, f"{where}, example {i}")


def check_mask(image: np.ndarray, mask: np.ndarray, num_classes: int, ignore_value: int,
               where: str) -> None:
    if mask.ndim != 2:
        raise ValueError(f"{where}: config.task='segmentation' needs a (H, W) mask per image, "
                         f"got a label of shape {mask.shape}. For one class per image set "
                         "config.task='classification'.")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{where}: the mask is {mask.shape[0]}x{mask.shape[1]} but its image "
                         f"is {image.shape[0]}x{image.shape[1]}; they must be the same size.")
    bad = (mask >= num_classes) & (mask != ignore_value) | (mask < 0)
    if bad.any():
        raise ValueError(f"{where}: mask values {sorted(set(np.unique(mask[bad]).tolist()))[:5]} "
                         f"are neither classes (0..{num_classes - 1}) nor the ignore value "
                         f"{ignore_value}.")


def check_model(logits_shape: tuple[int, ...], input_shape, num_classes: int, model: str) -> None:
    want = (*input_shape[:2], num_classes)
    if tuple(logits_shape[1:]) != want:
        raise ValueError(f"Model {model!r} gives logits of shape {logits_shape} for inputs "
                         f"{input_shape}; segmentation needs (N, {want[0]}, {want[1]}, "
                         f"{num_classes}): per-pixel scores at the input's size. Choose a "
                         "segmentation model such as 'unet' (config.model.name).")


def _valid(labels: jax.Array, num_classes: int, ignore_value: int) -> jax.Array:
    return (labels != ignore_value) & (labels >= 0) & (labels < num_classes)


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_value: int = 255
                        ) -> jax.Array:
    """(N, H, W) cross-entropy in float32; 0 at ignored pixels."""
    valid = _valid(labels, logits.shape[-1], ignore_value)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.where(valid, labels, 0))
    return jnp.where(valid, losses, 0.0)


def dice_loss(logits: jax.Array, labels: jax.Array, ignore_value: int = 255,
              eps: float = 1.0) -> jax.Array:
    """1 - the soft Dice coefficient of the softmax probabilities, averaged over classes
    (Milletari et al. 2016 without the squares; `eps` smooths classes absent from the batch)."""
    num_classes = logits.shape[-1]
    valid = _valid(labels, num_classes, ignore_value)[..., None].astype(jnp.float32)
    probs = jax.nn.softmax(logits.astype(jnp.float32), -1) * valid
    onehot = jax.nn.one_hot(jnp.where(valid[..., 0] > 0, labels, 0), num_classes) * valid
    axes = tuple(range(logits.ndim - 1))
    inter = jnp.sum(probs * onehot, axes)
    denom = jnp.sum(probs, axes) + jnp.sum(onehot, axes)
    return 1.0 - jnp.mean((2 * inter + eps) / (denom + eps))


def loss(logits: jax.Array, batch: dict, ignore_value: int = 255, class_weights=(),
         kind: str = "cross_entropy") -> jax.Array:
    labels = batch["label"]
    total = 0.0
    if "cross_entropy" in kind:
        valid = _valid(labels, logits.shape[-1], ignore_value)
        weights = valid.astype(jnp.float32)
        if class_weights:
            weights = weights * jnp.asarray(class_weights, jnp.float32)[jnp.where(valid, labels, 0)]
        losses = pixel_cross_entropy(logits, labels, ignore_value)
        total = jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1e-12)
    if "dice" in kind:
        total = total + dice_loss(logits, labels, ignore_value)
    return total


def train_metrics(logits: jax.Array, batch: dict, ignore_value: int = 255, **unused) -> dict:
    valid = _valid(batch["label"], logits.shape[-1], ignore_value)
    correct = (jnp.argmax(logits, -1) == batch["label"]) & valid
    return {"accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1)}


def eval_counts(logits: jax.Array, batch: dict, ignore_value: int = 255, **unused) -> dict:
    """Additive counts: the confusion matrix of the labelled pixels of real (not padding)
    examples, their summed cross-entropy, and the number of pixels and examples."""
    labels = batch["label"]
    valid = _valid(labels, logits.shape[-1], ignore_value)
    weights = batch.get("mask")
    if weights is not None:
        valid = valid & (weights[:, None, None] > 0)
    losses = pixel_cross_entropy(logits, labels, ignore_value)
    return {
        "count": jnp.sum(valid.astype(jnp.int32)),
        "examples": (jnp.sum(weights) if weights is not None
                     else jnp.asarray(labels.shape[0], jnp.float32)),
        "loss_sum": jnp.sum(jnp.where(valid, losses, 0.0)),
        "confusion": metrics_lib.pixel_confusion(labels, jnp.argmax(logits, -1),
                                                 logits.shape[-1], valid),
    }


def summarize(counts: dict) -> dict:
    counts = jax.device_get(counts)
    n = int(counts["count"])
    if n <= 0:
        raise ValueError("No labelled pixels were evaluated: the evaluation set is empty or "
                         "every pixel carries the ignore value.")
    confusion = np.asarray(counts["confusion"])
    summary = metrics_lib.segmentation_summary(confusion)
    return {"loss": float(counts["loss_sum"]) / n, "accuracy": summary.pop("accuracy"),
            **summary, "num_examples": int(round(float(counts["examples"]))), "num_pixels": n,
            "confusion_matrix": confusion.astype(int).tolist()}


def log_line(test: dict) -> str:
    return (f"pixel acc {test['accuracy']:.2%}  mIoU {test['mean_iou']:.4f}  "
            f"Dice {test['mean_dice']:.4f}")


def predict_masks(logits: jax.Array) -> np.ndarray:
    """(N, H, W, classes) logits -> (N, H, W) uint8 class masks (what `predict` writes)."""
    return np.asarray(jnp.argmax(logits, -1)).astype(np.uint8)


# ---------------------------------------------------------------- pictures and prediction

def palette(num_colors: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map: (num_colors, 3) uint8; class 0 black, 255 (ignore) near white."""
    colors = np.zeros((num_colors, 3), np.uint8)
    for i in range(num_colors):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors[i] = (r, g, b)
    return colors


def overlay(image: np.ndarray, mask: np.ndarray, ignore_value: int = 255,
            alpha: float = 0.45) -> np.ndarray:
    """The image (H, W, C) in [0, 255] with the mask's class colours blended over it (ignored
    pixels left bare): (H, W, 3) uint8. Class 0 is drawn in blue rather than VOC's black."""
    image = np.asarray(image, np.float64)
    rgb = np.repeat(image, 3, -1) if image.shape[-1] == 1 else image
    colors = palette().astype(np.float64)
    colors[0] = (40, 90, 220)
    paint = colors[np.asarray(mask)]
    keep = (np.asarray(mask) == ignore_value)[..., None]
    return np.where(keep, rgb, (1 - alpha) * rgb + alpha * paint).clip(0, 255).astype(np.uint8)


def save_mask(path: str, mask: np.ndarray) -> str:
    """A (H, W) class mask as a palette PNG: its pixel values are the classes (what
    `segmentation_folder` reads back), its colours VOC's."""
    from PIL import Image
    img = Image.fromarray(np.asarray(mask, np.uint8), mode="P")
    img.putpalette(palette().reshape(-1).tolist())
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path)
    return path


def write_outputs(run, names: list[str], images: np.ndarray, outputs: np.ndarray, out: str,
                  top_k: int = 0, pictures: bool = False) -> list[str]:
    """The per-task output of `predict`: masks/<name>.png (palette PNGs of the predicted
    classes) and, with `pictures`, pictures/<name>.png (the image with the mask overlaid).
    `outputs` are (N, H, W, classes) logits; `run` is unused (the signature is predict's)."""
    from PIL import Image
    written = []
    for name, image, logits in zip(names, images, outputs):
        stem = os.path.splitext(name)[0] + ".png"
        mask = np.asarray(logits).argmax(-1)
        written.append(save_mask(os.path.join(out, "masks", stem), mask))
        if pictures:
            path = os.path.join(out, "pictures", stem)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(overlay(image, mask)).save(path)
            written.append(path)
    return written


def segmenter(workdir: str, best: bool = False):
    """(segment, config, test dataset) of a segmentation run: `segment(images)` takes (N, H, W,
    C) uint8 images of the run's channels, any H and W (padded here to a multiple of 32), and
    returns their (N, H, W, classes) logits under the run's evaluation transforms."""
    import ml_collections
    from cnn_jax.data import get_dataset
    from cnn_jax.data.transforms import make_preprocess
    from cnn_jax.models import get_model
    from cnn_jax.train.checkpoint import restore_variables

    variables, saved = restore_variables(workdir, best=best)
    config = ml_collections.ConfigDict(saved)
    dataset_options = {k: v for k, v in saved["dataset"].items() if k != "name"}
    dataset = get_dataset(saved["dataset"]["name"], "test", **dataset_options)
    model_options = {k: v for k, v in saved["model"].items() if k != "name"}
    model_options["dtype"] = jnp.dtype(model_options.get("dtype", "float32"))
    model = get_model(saved["model"]["name"], num_classes=dataset.num_classes, **model_options)
    preprocess = make_preprocess(config.eval_transforms, train=False,
                                 num_classes=dataset.num_classes, mean=dataset.mean,
                                 std=dataset.std)

    @jax.jit
    def logits_fn(images):
        x = preprocess(jax.random.key(0), {"image": images})["image"]
        return model.apply(variables, x, train=False)

    def segment(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        h, w = images.shape[1:3]
        padded = np.pad(images, ((0, 0), (0, -h % 32), (0, -w % 32), (0, 0)), mode="reflect")
        return np.asarray(logits_fn(padded))[:, :h, :w]

    return segment, config, dataset


def predict_folder(workdir: str, folder: str, out: str, pictures: bool = True) -> list[str]:
    """Predicted masks (and overlays) for every .png/.jpg/.jpeg under `folder`, at each
    image's own size: `python -m cnn_jax.tasks.segmentation WORKDIR FOLDER OUT`."""
    from PIL import Image
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                   if f.lower().endswith((".png", ".jpg", ".jpeg")))
    if not paths:
        raise ValueError(f"No image files (.png, .jpg, .jpeg) under {folder}.")
    segment, _, dataset = segmenter(workdir)
    channels = dataset.image_shape[-1]
    written = []
    for path in paths:
        with Image.open(path) as img:
            image = np.asarray(img.convert("L" if channels == 1 else "RGB"))
        image = image[..., None] if channels == 1 else image
        written += write_outputs(None, [os.path.relpath(path, folder)], image[None],
                                 segment(image[None]), out, pictures=pictures)
    return written


if __name__ == "__main__":
    import sys
    if len(sys.argv) != 4:
        sys.exit("usage: python -m cnn_jax.tasks.segmentation WORKDIR IMAGE_FOLDER OUT_FOLDER")
    print("\n".join(predict_folder(*sys.argv[1:])))
