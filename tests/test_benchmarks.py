"""benchmarks/train_step.py end to end in its smoke mode (as CI runs it), and the PyTorch twins
of the benchmarked models (benchmarks/torch_models.py) against cnn_jax's parameters."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.models import get_model, input_shape
from conftest import IN_CI, require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("lenet5", "resnet18_cifar", "vgg11_cifar")
HAS_TORCH = importlib.util.find_spec("torch") is not None

# LeNet-5's multiply-adds per image: C1 28*28*6*5*5*1, C3 10*10*16*5*5*6, C5 120*5*5*16, F6, head.
LENET_MACS = 117_600 + 240_000 + 48_000 + 120 * 84 + 84 * 10
C1_MACS = 117_600


def test_smoke_run_writes_the_table_and_json(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "benchmarks/train_step.py", "--smoke",
                             "--out_dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr

    assert HAS_TORCH or not IN_CI, "CI must have PyTorch for the benchmark's PyTorch side"
    report = json.load(open(tmp_path / "train_step.json"))
    assert list(report["models"]) == list(MODELS)
    assert report["machine"]["cpu_cores"] > 0 and report["machine"]["jax"] == jax.__version__
    settings, peaks = report["settings"], report["matmul_peak_flops"]
    for name, r in report["models"].items():
        # Each figure is what it says it is, recomputed from the parts the report also keeps.
        for fw in ("jax", "torch") if HAS_TORCH else ("jax",):
            rates = r[fw]["rep_images_per_s"]
            assert len(rates) == settings["reps"] == r["reps"] and min(rates) > 0
            assert r[fw]["images_per_s"] == pytest.approx(float(np.median(rates)))
            achieved = r["jax"]["flops_per_step"] * r[fw]["images_per_s"] / r["batch_size"]
            assert r[fw]["flops_per_s"] == pytest.approx(achieved)
            assert r[fw]["fraction_of_matmul_peak"] == pytest.approx(achieved / peaks[fw])
            assert r[fw]["fraction_of_matmul_peak"] > 0  # (may pass 1 on a busy machine:
            # the peak and the step are timed at different moments)
        assert 0 < r["jax"]["compile_s"] < 300
        memory = r["jax"]["memory_bytes"]
        assert memory["peak"] == (memory["argument"] + memory["output"] - memory["alias"]
                                  + memory["temp"])
        # The step's arguments hold at least the float32 parameters and SGD's momentum.
        assert memory["argument"] >= 2 * 4 * r["params"]
        if HAS_TORCH:
            assert r["torch"]["params"] == r["params"]
        else:
            assert r["torch"] is None

    # FLOPs are per step (the whole batch of 8), not per image: LeNet-5 against a hand count,
    # forward + weight gradients + input gradients (none for C1, whose input is the image).
    hand = 2 * (3 * LENET_MACS - C1_MACS) * report["settings"]["batch_size"]
    assert 1.0 <= report["models"]["lenet5"]["jax"]["flops_per_step"] / hand < 1.2

    table = (tmp_path / "train_step.md").read_text()
    assert "| model | params | cnn_jax img/s | PyTorch img/s |" in table
    for name in MODELS:
        assert f"| {name} | {report['models'][name]['params']:,} |" in table


@pytest.mark.parametrize("name", MODELS)
def test_torch_models_have_cnn_jax_parameters(name):
    torch = require("torch", "the benchmark's PyTorch side")
    from benchmarks import torch_models

    for options in ({}, {"width": 16}) if name.startswith("resnet") else ({},):
        model = get_model(name, num_classes=10, **options)
        shape = input_shape(name)
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)))
        twin = torch_models.build(name, num_classes=10, **options)
        # Tensor by tensor (sizes: the layouts differ, OIHW against HWIO), then in total.
        assert (sorted(p.numel() for p in twin.parameters())
                == sorted(x.size for x in jax.tree.leaves(variables["params"])))
        h, w, c = shape
        assert twin(torch.zeros(2, c, h, w)).shape == (2, 10)
    if name == "lenet5":
        assert sum(p.numel() for p in twin.parameters()) == 61_706


@pytest.mark.parametrize("name", ["mobilenet_v2_cifar", "convnext_tiny_cifar"])
def test_torchvision_twins_compute_what_cnn_jax_computes(name):
    """The modern twins are torchvision's modules with the `_cifar` stem and strides: their
    weights, imported into cnn_jax's `_cifar` model, give the same logits (equal counts alone
    would not catch a wrong stride)."""
    torch = require("torch", "the benchmark's PyTorch side")
    require("torchvision", "the benchmark's PyTorch side")
    from benchmarks import torch_models
    from cnn_jax.transfer.torchvision import import_torchvision
    from helpers.torch_reference import randomize_batch_norm_

    twin = torch_models.build(name, num_classes=10).eval()
    randomize_batch_norm_(twin, torch)
    state = {k: v.numpy() for k, v in twin.state_dict().items()}
    model, variables, report = import_torchvision(state, name, num_classes=10)
    assert not report.reinitialized
    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    out = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    assert np.abs(expected).max() > 1e-3  # logits of a size that makes the comparison mean something
    assert np.abs(out - expected).max() <= 1e-4 * np.abs(expected).max()


def test_train_loop_benchmark_smoke(tmp_path):
    out = tmp_path / "train_loop.json"
    result = subprocess.run([sys.executable, "benchmarks/train_loop.py", "--smoke", "--cases",
                             "lenet5", "--out", str(out)], cwd=ROOT,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (row,) = json.load(open(out))
    assert row["case"] == "lenet5" and row["bare step img/s"] > 0 and row["loop img/s"] > 0
    assert "| lenet5 | lenet5 | 8 |" in result.stdout
