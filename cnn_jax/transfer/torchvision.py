"""torchvision weights in and out: ResNet-18/34/50/101/152, VGG-11/13/16/19 (with and without
BatchNorm), AlexNet, MobileNetV2/V3, EfficientNet-B0..B3, RegNetY-400MF, ConvNeXt,
DenseNet-121, and the segmentation models FCN / DeepLabV3 with a ResNet-50/101 backbone,
from the state-dict file a user downloaded, and back.

    model, variables, report = import_torchvision("resnet18-f37072fd.pth", "resnet18")
    model, variables, report = import_torchvision("resnet50.safetensors", "resnet50",
                                                   num_classes=10, reinit=("head",))
    save_state_dict("mine.safetensors", to_torchvision(variables, "resnet18"))

torchvision's key names are the format (`conv1.weight`, `layer1.0.downsample.1.running_mean`,
`features.0.weight`, `classifier.6.bias`, ...). Converting:

- convolution kernels: PyTorch's (out, in, h, w) to Flax's (h, w, in, out);
- linear weights: (out, in) transposed to (in, out);
- the first dense layer of VGG/AlexNet reads the pooled (C, 7, 7) / (C, 6, 6) map, which
  PyTorch flattens channel-first (NCHW) and cnn_jax channel-last (NHWC): its input rows are
  permuted accordingly;
- BatchNorm: weight/bias are scale/bias, running_mean/running_var the batch statistics; the
  epsilon (1e-5) and momentum (0.1) are PyTorch's already (`cnn_jax.layers.make_norm`).
  `num_batches_tracked` has no counterpart: ignored on import, written as 0 on export.

The modern families name their modules after torchvision's module paths (see
`cnn_jax/models/blocks.py`), so their keys are the module path joined by dots; only the
classifier ("head") is renamed, and ConvNeXt's layer scale gets torchvision's (C, 1, 1) shape.

The same names serve the `_cifar` variants (only their stem or head shapes differ).
Segmentation models (`fcn_resnet50`, `deeplabv3_resnet50`, ...): `backbone.` + the ResNet's
keys, and `classifier.*` for the head (torchvision's `aux_classifier`, a training-only loss
head, is not built: its keys in a file are ignored). An ImageNet classifier's state dict
(keys without `backbone.`) imported into a segmentation model initializes its backbone
(`classifier_to_backbone`; its `fc.*` is ignored); pass reinit=('classifier',) to keep the
head freshly initialized.
Files: `.safetensors` is read and written with `safetensors` (no PyTorch needed); `.pth`/`.pt`
needs PyTorch and is read with `torch.load(weights_only=True)`, which refuses anything but
tensors and plain containers: a pickle is never run.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.errors import UserError
from cnn_jax.models import MODELS, get_model, input_shape as model_input_shape
from cnn_jax.transfer.loading import (LoadReport, Patterns, check_finite, flatten, full_name,
                                      leaf_name, load_error, matcher, unflatten)

FAMILIES = ("resnet", "resnext", "wide_resnet", "vgg", "alexnet", "fcn", "deeplabv3",
            "mobilenet", "efficientnet", "regnet", "convnext", "densenet")
SEGMENTATION_FAMILIES = ("fcn", "deeplabv3")
# Families whose module paths are torchvision's keys; the value is the classifier's key.
DOTTED_HEADS = {"mobilenet_v2": "classifier.1", "mobilenet_v3": "classifier.3",
                "efficientnet": "classifier.1", "regnet": "fc", "convnext": "classifier.2",
                "densenet": "classifier"}
TORCH_EXTENSIONS = (".pth", ".pt", ".bin")
SAFETENSORS_EXTENSIONS = (".safetensors",)
ALEXNET_FEATURES = (0, 3, 6, 8, 10)  # torchvision's indices of AlexNet's five convolutions
ALEXNET_CLASSIFIER = {"fc1": 1, "fc2": 4, "head": 6}
VGG_CLASSIFIER = {"fc1": 0, "fc2": 3, "head": 6}
# cnn_jax's segmentation heads (cnn_jax/models/segmentation.py) -> torchvision's `classifier`.
SEGMENTATION_HEAD = {
    ("block", "conv"): "0", ("block", "norm"): "1", ("out",): "4",    # FCNHead
    ("aspp", "pooling", "conv"): "0.convs.4.1", ("aspp", "pooling", "norm"): "0.convs.4.2",
    ("aspp", "project", "conv"): "0.project.0", ("aspp", "project", "norm"): "0.project.1",
}
DEEPLAB_HEAD = {("block", "conv"): "1", ("block", "norm"): "2", ("out",): "4"}
LEAVES = {  # (collection, Flax leaf) -> PyTorch parameter or buffer
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
    ("params", "layer_scale"): "layer_scale",
}


class TorchKey(NamedTuple):
    key: str      # torchvision's name
    layout: str   # 'conv' | 'dense' | 'flatten_dense' | 'vector' | 'layer_scale'
    channels: int = 0  # flatten_dense: channels of the feature map it reads


def family(model_name: str) -> str:
    for fam in FAMILIES:
        if model_name.startswith(fam) and model_name in MODELS:
            return "resnet" if fam in ("resnext", "wide_resnet") else fam  # ResNet's layout
    supported = sorted(n for n in MODELS if n.startswith(FAMILIES))
    raise ValueError(f"No torchvision layout for model {model_name!r}. Supported: "
                     f"{', '.join(supported)}.")


def _vgg_feature_indices(model_name: str) -> dict[str, int]:
    """conv<k> -> index of its Conv2d in torchvision's `features` Sequential (a conv is
    followed by [BatchNorm2d,] ReLU; a max pool takes one index)."""
    keywords = MODELS[model_name].build.keywords
    layers, bn = keywords["layers"], keywords.get("batch_norm", False)
    indices, i, k = {}, 0, 0
    for v in layers:
        if v == "M":
            i += 1
        else:
            k += 1
            indices[f"conv{k}"] = i
            i += 3 if bn else 2
    return indices


def _module_key(fam: str, module: tuple[str, ...], model_name: str) -> str | None:
    """torchvision's module name for a cnn_jax module path, or None if it has none."""
    dotted = next((h for prefix, h in DOTTED_HEADS.items() if model_name.startswith(prefix)), None)
    if dotted:
        return dotted if module == ("head",) else ".".join(module)
    if fam in SEGMENTATION_FAMILIES:
        if module[:1] == ("backbone",):
            key = _module_key("resnet", module[1:], model_name)
            return None if key is None else f"backbone.{key}"
        if module[:1] != ("classifier",):
            return None
        head = module[1:]
        if fam == "deeplabv3" and head in DEEPLAB_HEAD:
            return f"classifier.{DEEPLAB_HEAD[head]}"
        branch = re.fullmatch(r"branch(\d+)", head[1]) if len(head) == 3 else None
        if head[0] == "aspp" and branch:
            return f"classifier.0.convs.{branch.group(1)}.{0 if head[2] == 'conv' else 1}"
        return f"classifier.{SEGMENTATION_HEAD[head]}" if head in SEGMENTATION_HEAD else None
    if fam == "resnet":
        if module == ("stem", "conv"):
            return "conv1"
        if module == ("stem", "norm"):
            return "bn1"
        if module == ("head",):
            return "fc"
        block = re.fullmatch(r"layer(\d+)_(\d+)", module[0])
        if block and len(module) == 3:
            prefix = f"layer{block.group(1)}.{block.group(2)}"
            conv = re.fullmatch(r"conv(\d+)", module[1])
            if conv:
                return f"{prefix}.{'conv' if module[2] == 'conv' else 'bn'}{conv.group(1)}"
            if module[1] == "downsample":
                return f"{prefix}.downsample.{0 if module[2] == 'conv' else 1}"
        return None
    classifier = ALEXNET_CLASSIFIER if fam == "alexnet" else VGG_CLASSIFIER
    if module == ("head",):
        return f"classifier.{classifier['head']}"
    if len(module) == 2 and module[0] in classifier and module[1] == "dense":
        return f"classifier.{classifier[module[0]]}"
    conv = re.fullmatch(r"conv(\d+)", module[0])
    if conv and len(module) == 2:
        index = (ALEXNET_FEATURES[int(conv.group(1)) - 1] if fam == "alexnet"
                 else _vgg_feature_indices(model_name)[module[0]])
        return f"features.{index + (module[1] == 'norm')}"
    return None


def torchvision_keys(model_name: str, variables: Mapping[str, Any]) -> dict[tuple[str, ...], TorchKey]:
    """{cnn_jax path (collection, module..., leaf): TorchKey} for every array of `variables`
    (arrays or `jax.ShapeDtypeStruct`s of the registered model `model_name`)."""
    fam = family(model_name)
    flat = flatten(variables)
    last_conv_channels = 0
    if fam in ("vgg", "alexnet"):
        convs = sorted((int(p[1][4:]), v.shape[-1]) for p, v in flat.items()
                       if p[0] == "params" and re.fullmatch(r"conv\d+", p[1]) and p[-1] == "kernel")
        last_conv_channels = convs[-1][1]
    table = {}
    for path, value in flat.items():
        module_key = _module_key(fam, path[1:-1], model_name)
        suffix = LEAVES.get((path[0], path[-1]))
        if module_key is None or suffix is None:
            raise ValueError(f"{full_name(path)} of {model_name!r} has no torchvision "
                             "counterpart (was the model built with other options?).")
        if path[-1] == "layer_scale":
            layout, channels = "layer_scale", 0
        elif len(value.shape) == 4:
            layout, channels = "conv", 0
        elif len(value.shape) == 2 and path[1] == "fc1":
            layout, channels = "flatten_dense", last_conv_channels
        elif len(value.shape) == 2:
            layout, channels = "dense", 0
        else:
            layout, channels = "vector", 0
        table[path] = TorchKey(f"{module_key}.{suffix}", layout, channels)
    return table


def torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The PyTorch shape of a Flax array of `shape`."""
    if layout == "conv":
        h, w, i, o = shape
        return (o, i, h, w)
    if layout in ("dense", "flatten_dense"):
        return (shape[1], shape[0])
    if layout == "layer_scale":
        return (shape[0], 1, 1)
    return tuple(shape)


def to_flax_layout(array: np.ndarray, tk: TorchKey) -> np.ndarray:
    if tk.layout == "conv":
        return np.transpose(array, (2, 3, 1, 0))
    if tk.layout == "dense":
        return np.transpose(array)
    if tk.layout == "flatten_dense":  # (out, C*h*w) channel-first -> (h*w*C, out) channel-last
        out, features = array.shape
        c = tk.channels
        return array.reshape(out, c, features // c).transpose(2, 1, 0).reshape(features, out)
    if tk.layout == "layer_scale":
        return array.reshape(-1)
    return array


def to_torch_layout(array: np.ndarray, tk: TorchKey) -> np.ndarray:
    if tk.layout == "conv":
        return np.transpose(array, (3, 2, 0, 1))
    if tk.layout == "dense":
        return np.transpose(array)
    if tk.layout == "flatten_dense":  # (h*w*C, out) -> (out, C*h*w)
        features, out = array.shape
        c = tk.channels
        return array.reshape(features // c, c, out).transpose(2, 1, 0).reshape(out, features)
    if tk.layout == "layer_scale":
        return array.reshape(-1, 1, 1)
    return array


def classifier_to_backbone(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A torchvision ResNet classifier's state dict under a segmentation model's names: every
    key prefixed with `backbone.`, the classifier `fc.*` dropped."""
    return {f"backbone.{k}": v for k, v in state_dict.items() if not k.startswith("fc.")}


def _ignorable(key: str, mapped_modules: set[str]) -> bool:
    """BatchNorm's step counter, which cnn_jax does not keep."""
    module, _, leaf = key.rpartition(".")
    return leaf == "num_batches_tracked" and module in mapped_modules


def from_torchvision(state_dict: Mapping[str, Any], model_name: str, target: Mapping[str, Any],
                     *, reinit: Patterns = ()) -> tuple[dict[str, Any], LoadReport]:
    """`target`'s variables with every array taken from a torchvision state dict.

    `target`: the variables of `get_model(model_name, ...)`, initialized (or
    `jax.ShapeDtypeStruct`s when `reinit` is empty: everything then comes from the file).
    `reinit`: cnn_jax name patterns kept at `target`'s values; the file's keys for them may
    be missing or of any shape (e.g. ('head',) for another number of classes, or a file
    without `fc.*`). Any other missing, unexpected or mis-shaped key is an error listing all.
    """
    is_reinit = matcher(reinit)
    table = torchvision_keys(model_name, target)
    target_flat = flatten(target)
    state_dict = {k: v for k, v in state_dict.items()}
    mapped_modules = {tk.key.rpartition(".")[0] for tk in table.values()}
    report = LoadReport()
    if (family(model_name) in SEGMENTATION_FAMILIES and "conv1.weight" in state_dict
            and not any(k.startswith("backbone.") for k in state_dict)):
        # An ImageNet classifier's weights for the backbone.
        report.ignored += [k for k in state_dict if k.startswith("fc.")]
        state_dict = classifier_to_backbone(state_dict)
    missing, mismatched, out = [], [], {}
    for path, tk in table.items():
        value = target_flat[path]
        if is_reinit(leaf_name(path)):
            if isinstance(value, jax.ShapeDtypeStruct):
                raise ValueError(f"{full_name(path)} is re-initialized: pass initialized "
                                 "variables as `target`, not shapes.")
            out[path] = value
            report.reinitialized.append(full_name(path))
            if tk.key in state_dict:
                report.ignored.append(tk.key)
            continue
        expected = torch_shape(tuple(value.shape), tk.layout)
        if tk.key not in state_dict:
            missing.append(f"{tk.key} {expected}")
            continue
        array = np.asarray(state_dict[tk.key])
        if array.shape != expected:
            mismatched.append(f"{tk.key}: file {array.shape}, model expects {expected}")
            continue
        out[path] = jnp.asarray(to_flax_layout(array, tk), dtype=value.dtype)
        report.loaded.append(tk.key)
        report.loaded_values += array.size
    used = {tk.key for tk in table.values()}
    reinit_modules = {tk.key.rpartition(".")[0] for p, tk in table.items()
                      if is_reinit(leaf_name(p))}
    unexpected, counters = [], []
    for key in state_dict:
        if key in used:
            continue
        if _ignorable(key, mapped_modules):
            counters.append(key)
        elif key.startswith("aux_classifier.") and family(model_name) in SEGMENTATION_FAMILIES:
            report.ignored.append(key)  # torchvision's auxiliary head (a training-only loss)
        elif key.rpartition(".")[0] in reinit_modules:
            report.ignored.append(key)  # e.g. a buffer of a re-initialized module
        else:
            unexpected.append(f"{key} {tuple(np.shape(state_dict[key]))}")
    report.ignored += counters  # BatchNorm's num_batches_tracked, listed last
    if missing or unexpected or mismatched:
        only_head = all(k.startswith(("fc.", f"classifier.{VGG_CLASSIFIER['head']}."))
                        for k in missing + mismatched) and not unexpected
        only_seg_head = all(k.startswith("classifier.") for k in missing + mismatched)
        hint = ("These are the classifier's keys: pass reinit=('head',) to keep a freshly "
                "initialized head (another number of classes, or a file without one)."
                if only_head and family(model_name) not in SEGMENTATION_FAMILIES else
                "These are the segmentation head's keys: pass reinit=('classifier',) to keep "
                "a freshly initialized head (a classifier's weights as backbone), or "
                "reinit=('classifier/out',) for another number of classes."
                if only_seg_head and not unexpected else
                f"Is the file a torchvision {model_name} state dict? reinit=('head',) accepts "
                "a missing or differently-sized classifier.")
        raise load_error(f"the torchvision state dict into {model_name!r}", missing, unexpected,
                         mismatched, hint)
    return unflatten(out), report


def to_torchvision(variables: Mapping[str, Any], model_name: str) -> dict[str, np.ndarray]:
    """A torchvision state dict ({key: NumPy array}) of cnn_jax `variables`, in torchvision's
    key order; `num_batches_tracked` is 0 for every BatchNorm."""
    table = torchvision_keys(model_name, variables)
    flat = flatten(variables)
    state = {tk.key: np.array(to_torch_layout(np.asarray(flat[path]), tk), order="C")
             for path, tk in table.items()}  # writable copies: torch.from_numpy takes them
    for path, tk in table.items():
        if path[0] == "batch_stats" and path[-1] == "mean":
            state[tk.key.rpartition(".")[0] + ".num_batches_tracked"] = np.array(0, np.int64)
    return {k: state[k] for k in sorted(state, key=_torch_order)}


_ORDER = {name: i for i, name in enumerate(
    ["backbone", "features", "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample",
     "layer1", "layer2", "layer3", "layer4", "classifier", "fc", "convs", "project",
     "weight", "bias", "running_mean", "running_var", "num_batches_tracked"])}


def _torch_order(key: str) -> tuple:
    """torchvision's module registration order, from a key's parts."""
    return tuple((0, int(p)) if p.isdigit() else (1, _ORDER.get(p, len(_ORDER)), p)
                 for p in key.split("."))


# ---- files -------------------------------------------------------------------------------


def _needs_torch(path: str) -> ImportError:
    return ImportError(
        f"Reading {path} (a PyTorch file) needs PyTorch: `pip install torch`. Without PyTorch, "
        "convert it to .safetensors once on a machine that has it:\n    python -c \"import torch; "
        "from safetensors.torch import save_file; save_file(torch.load('IN.pth', "
        "weights_only=True), 'OUT.safetensors')\"\nand read the .safetensors file instead.")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """{key: NumPy array} from a `.safetensors` file (no PyTorch needed) or a `.pth`/`.pt`/
    `.bin` file (PyTorch, `weights_only=True`: objects other than tensors and plain
    containers are refused, never unpickled). A checkpoint that wraps the state dict in
    {'state_dict': ...} or {'model': ...}, or whose keys carry DataParallel's `module.`
    prefix, is unwrapped."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No state-dict file at {path}.")
    if ext in SAFETENSORS_EXTENSIONS:
        from safetensors.numpy import load_file
        try:
            state = load_file(path)
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise UserError(f"{path} is not a readable .safetensors file ({error}): it is "
                            "truncated, damaged, or another kind of file with that extension. "
                            "Download or convert it again.") from None
    elif ext in TORCH_EXTENSIONS:
        try:
            import torch
        except ImportError:
            raise _needs_torch(path) from None
        import pickle
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path} holds objects other than tensors; it was not loaded, because "
                "unpickling them could run arbitrary code (torch.load with weights_only=True "
                f"refused it: {str(error).splitlines()[0]}). Save a plain state dict "
                "(`torch.save(model.state_dict(), path)`) or use .safetensors.") from None
        state = _unwrap(state, path)
        state = {k: _tensor_to_numpy(v, k, path) for k, v in state.items()}
    else:
        raise ValueError(f"Unknown state-dict file type {ext!r} ({path}). Valid: "
                         f"{', '.join(SAFETENSORS_EXTENSIONS + TORCH_EXTENSIONS)}.")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    check_finite(state, path)
    return state


def _unwrap(obj: Any, path: str) -> dict:
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                return _unwrap(obj[wrapper], path)
        return dict(obj)
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict ({{name: tensor}}).")


def _tensor_to_numpy(value: Any, key: str, path: str) -> np.ndarray:
    import torch
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor.")
    value = value.detach().cpu()
    if value.dtype in (torch.bfloat16, torch.float16):
        value = value.float()
    return value.numpy()


def save_state_dict(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
    """Writes {key: array} as `.safetensors` (no PyTorch needed) or `.pth` (PyTorch)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    arrays = {k: np.asarray(v, order="C") for k, v in state_dict.items()}
    if ext in SAFETENSORS_EXTENSIONS:
        from safetensors.numpy import save_file
        save_file(arrays, path)
    elif ext in TORCH_EXTENSIONS:
        try:
            import torch
        except ImportError:
            raise ImportError(f"Writing {path} needs PyTorch (`pip install torch`); "
                              ".safetensors needs no PyTorch.") from None
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    else:
        raise ValueError(f"Unknown state-dict file type {ext!r} ({path}). Valid: "
                         f"{', '.join(SAFETENSORS_EXTENSIONS + TORCH_EXTENSIONS)}.")


def import_torchvision(weights: str | Mapping[str, Any], model_name: str, *,
                       num_classes: int = 1000, reinit: Patterns = (), rng: jax.Array | None = None,
                       input_shape: tuple[int, int, int] | None = None, **model_kwargs):
    """`(model, variables, report)`: `get_model(model_name, num_classes=..., **model_kwargs)`
    with the weights of a torchvision state dict (a file path or a mapping). Parts named by
    `reinit` (e.g. ('head',) for another number of classes) are initialized from `rng`."""
    state_dict = load_state_dict(weights) if isinstance(weights, (str, os.PathLike)) else weights
    model = get_model(model_name, num_classes=num_classes, **model_kwargs)
    shape = input_shape or model_input_shape(model_name)
    def init(key):
        return model.init(key, jnp.zeros((1, *shape), jnp.float32))

    key = rng if rng is not None else jax.random.key(0)
    shapes = flatten(jax.eval_shape(init, key))
    is_reinit = matcher(reinit)
    fresh = [path for path in shapes if is_reinit(leaf_name(path))]
    # Only the re-initialized arrays are computed (XLA drops the rest of the initialization).
    values = jax.jit(lambda key: {p: flatten(init(key))[p] for p in fresh})(key) if fresh else {}
    target = unflatten({**shapes, **values})
    variables, report = from_torchvision(state_dict, model_name, target, reinit=reinit)
    if isinstance(weights, (str, os.PathLike)):
        report.source = os.fspath(weights)
    return model, variables, report


def export_torchvision(path: str, variables: Mapping[str, Any], model_name: str) -> None:
    """Writes `variables` as a torchvision state dict (`.safetensors` or `.pth`)."""
    save_state_dict(path, to_torchvision(variables, model_name))
