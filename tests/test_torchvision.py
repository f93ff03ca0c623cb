"""Parity with PyTorch: torchvision-layout models (tests/helpers/torch_models.py, torchvision's
module names) with random weights, saved as a state dict, imported into cnn_jax, give the same
logits in eval mode; export then import round-trips exactly; the export loads into the PyTorch
model. Also: pickled files are never loaded unsafely. Skipped without PyTorch (an optional
test dependency: `pip install torch==2.13.0`)."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cnn_jax.transfer import import_torchvision, load_state_dict, save_state_dict, to_torchvision  # noqa: E402
from cnn_jax.transfer.torchvision import from_torchvision  # noqa: E402
from helpers import torch_models  # noqa: E402

# Input sizes: small where the architecture allows, and chosen so that torchvision's adaptive
# pooling does real work (ResNet: any size; AlexNet 159x159 -> a 4x4 map pooled to 6x6 with
# overlapping bins; VGG 96x96 -> 3x3 pooled to 7x7).
CASES = [("resnet18", 64, ".pth"), ("resnet50", 64, ".safetensors"),
         ("vgg11_bn", 96, ".safetensors"), ("alexnet", 159, ".pth")]


def logits_jax(model, variables, x_nchw):
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return np.asarray(apply(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1))))


@pytest.mark.parametrize("name,size,ext", CASES, ids=[c[0] for c in CASES])
def test_imported_torchvision_weights_give_pytorchs_logits(name, size, ext, tmp_path):
    torch.manual_seed(0)
    reference = torch_models.randomize_(torch_models.build(name)).eval()
    path = tmp_path / f"{name}{ext}"
    if ext == ".pth":
        torch.save(reference.state_dict(), path)
    else:
        save_state_dict(path, {k: v.numpy() for k, v in reference.state_dict().items()})
    x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()

    model, variables, report = import_torchvision(path, name)
    got = logits_jax(model, variables, x)
    assert got.shape == (2, 1000)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert report.reinitialized == [] and report.source == str(path)
    assert all(k.endswith("num_batches_tracked") for k in report.ignored)

    # Export -> the same state dict, key for key and bit for bit (in torchvision's order) ...
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    exported = to_torchvision(variables, name)
    assert list(exported) == list(state)
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            assert exported[key].dtype == np.int64 and exported[key].shape == ()
        else:
            assert exported[key].dtype == value.dtype and np.array_equal(exported[key], value), key
    # ... which imports back to the same variables exactly, ...
    again, _ = from_torchvision(exported, name, jax.eval_shape(lambda: variables))
    assert jax.tree.all(jax.tree.map(np.array_equal, again, variables))
    # ... and which PyTorch loads strictly, computing the same logits.
    del reference, again
    fresh = torch_models.build(name).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    with torch.no_grad():
        np.testing.assert_array_equal(fresh(torch.from_numpy(x)).numpy(), expected)


def test_finetuning_import_keeps_the_backbone_and_a_fresh_head(tmp_path):
    torch.manual_seed(1)
    reference = torch_models.randomize_(torch_models.build("resnet18")).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model, variables, report = import_torchvision(path, "resnet18", num_classes=10,
                                                  reinit=("head",), input_shape=(64, 64, 3))
    assert variables["params"]["head"]["kernel"].shape == (512, 10)
    assert report.reinitialized == ["params/head/bias", "params/head/kernel"]
    assert report.ignored[:2] == ["fc.bias", "fc.weight"]
    np.testing.assert_array_equal(
        variables["params"]["layer3_1"]["conv2"]["conv"]["kernel"],
        reference.layer3[1].conv2.weight.detach().numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["layer2_0"]["downsample"]["norm"]["var"],
                                  reference.layer2[0].downsample[1].running_var.numpy())


class _Payload:
    """Unpickling this runs `os.system`: what an unsafe torch.load would execute."""
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickled_objects_are_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:  # what torch.save writes for a model object, minus the zip
        torch.save({"conv1.weight": torch.zeros(1), "x": _Payload()}, f)
    with pytest.raises(ValueError, match=r"holds objects other than tensors; it was not loaded"):
        load_state_dict(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    raw = tmp_path / "raw.pth"  # a plain (non-zip) pickle
    raw.write_bytes(pickle.dumps(_Payload(), protocol=2))
    with pytest.raises(ValueError, match="holds objects other than tensors; it was not loaded"):
        load_state_dict(raw)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_wrapped_and_dataparallel_state_dicts_are_unwrapped(tmp_path):
    state = {"module.fc.weight": torch.ones(2, 3), "module.fc.bias": torch.zeros(2)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    loaded = load_state_dict(tmp_path / "ckpt.pth")
    assert sorted(loaded) == ["fc.bias", "fc.weight"]
    assert loaded["fc.weight"].dtype == np.float32 and loaded["fc.weight"].shape == (2, 3)
    torch.save({"fc.weight": torch.ones(2, 3, dtype=torch.bfloat16)}, tmp_path / "bf16.pth")
    assert load_state_dict(tmp_path / "bf16.pth")["fc.weight"].dtype == np.float32
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_state_dict(tmp_path / "list.pth")
