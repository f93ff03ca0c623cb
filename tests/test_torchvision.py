"""Parity with torchvision's own models (`torchvision.models.<name>(weights=None)`), every
family and depth: random weights and random BatchNorm statistics, saved as a state dict
(.pth or .safetensors), imported into cnn_jax, give the same logits in eval mode; export gives
torchvision's state dict key for key and bit for bit, imports back exactly, and loads into
`torchvision.models.<name>()` with `strict=True`. Also: pickled files are never loaded unsafely.
torch and torchvision are test references (`pip install -e ".[test-references]"`): these tests
skip without them, and fail under CI=true."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.transfer import import_torchvision, load_state_dict, save_state_dict, to_torchvision
from cnn_jax.transfer.torchvision import from_torchvision
from conftest import require
from helpers.torch_reference import randomize_batch_norm_

# name: input (H, W), non-square so that a height/width mix-up shows, and small: ResNet's
# 64x48 ends in a 2x2 map; VGG's 64x96 in a 2x3 map and AlexNet's 127x159 in a 3x4 map, which
# torchvision's adaptive pooling spreads over 7x7 / 6x6 with overlapping bins.
SIZES = {"alexnet": (127, 159)}
SIZES.update({f"vgg{d}{bn}": (64, 96) for d in (11, 13, 16, 19) for bn in ("", "_bn")})
SIZES.update({f"resnet{d}": (64, 48) for d in (18, 34, 50, 101, 152)})
SLOW = {"vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "resnet101", "resnet152"}  # over ~20 s each
CASES = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in SIZES]


@pytest.fixture(scope="module")
def torch():
    return require("torch")


@pytest.fixture(scope="module")
def torchvision():
    return require("torchvision")




def logits_jax(model, variables, x_nchw):
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return np.asarray(apply(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1))))


@pytest.mark.parametrize("name", CASES)
def test_torchvision_weights_import_and_export_exactly(name, torch, torchvision, tmp_path):
    torch.manual_seed(0)
    reference = randomize_batch_norm_(getattr(torchvision.models, name)(weights=None), torch,
                                      batches_tracked=7)
    reference.eval()
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    path = tmp_path / (f"{name}.pth" if len(name) % 2 else f"{name}.safetensors")  # both kinds
    if path.suffix == ".pth":
        torch.save(reference.state_dict(), path)
    else:
        save_state_dict(path, state)
    x = np.random.default_rng(0).normal(size=(2, 3, *SIZES[name])).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    del reference

    model, variables, report = import_torchvision(path, name)
    got = logits_jax(model, variables, x)
    assert got.shape == (2, 1000)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert report.reinitialized == [] and report.source == str(path)
    assert sorted(report.loaded) == sorted(k for k in state if not k.endswith("num_batches_tracked"))
    assert sorted(report.ignored) == sorted(k for k in state if k.endswith("num_batches_tracked"))

    # Export -> torchvision's state dict, key for key (in its order) and bit for bit ...
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
    del again, variables, state
    # ... and which torchvision's model loads strictly, computing the same logits.
    with torch.device("meta"):  # no initialization: every tensor comes from the export
        fresh = getattr(torchvision.models, name)()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True,
                          assign=True)
    with torch.no_grad():
        np.testing.assert_array_equal(fresh.eval()(torch.from_numpy(x)).numpy(), expected)


def test_finetuning_import_keeps_the_backbone_and_a_fresh_head(torch, torchvision, tmp_path):
    torch.manual_seed(1)
    reference = randomize_batch_norm_(torchvision.models.resnet18(weights=None), torch, seed=1,
                                      batches_tracked=7)
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


def test_pickled_objects_are_never_unpickled(torch, tmp_path, monkeypatch):
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


def test_wrapped_and_dataparallel_state_dicts_are_unwrapped(torch, tmp_path):
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
