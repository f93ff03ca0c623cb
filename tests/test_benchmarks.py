"""benchmarks/train_step.py end to end in its smoke mode (as CI runs it), and the PyTorch twins
of the benchmarked models (benchmarks/torch_models.py) against cnn_jax's parameters."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cnn_jax.models import get_model, input_shape
from conftest import require

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

    report = json.load(open(tmp_path / "train_step.json"))
    assert list(report["models"]) == list(MODELS)
    assert report["machine"]["cpu_cores"] > 0 and report["machine"]["jax"] == jax.__version__
    for name, r in report["models"].items():
        assert r["jax"]["images_per_s"] > 0 and r["jax"]["compile_s"] > 0
        assert r["jax"]["memory_bytes"]["peak"] > 0 and 0 < r["jax"]["fraction_of_matmul_peak"]
        if HAS_TORCH:
            assert r["torch"]["images_per_s"] > 0 and r["torch"]["params"] == r["params"]
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
