"""Data parallelism: the one train step under `none` (1 device), `pmap` and `mesh` (8 fake CPU
devices), and over 2 processes on 127.0.0.1 with 4 devices each, ends with the same
parameters, BatchNorm statistics and evaluation counts; gradient accumulation equals one step
on the larger batch.

The multi-device runs are subprocesses (tests/helpers/parallel_run.py): the device count is
fixed when JAX starts."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from cnn_jax.models import get_model
from cnn_jax.train.parallel import DataParallel, check_batch_sizes
from cnn_jax.train.step import create_train_state, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "tests", "helpers", "parallel_run.py")
TIMEOUT = 300


def run(mode, model, out, *extra):
    result = subprocess.run([sys.executable, RUN, mode, model, str(out), *extra], cwd=ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(out))


def assert_same_run(a, b, rtol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith("count/"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
        else:  # relative to the leaf's norm: summation order differs between modes
            err = np.linalg.norm(a[key] - b[key]) / max(np.linalg.norm(a[key]), 1e-12)
            assert err <= rtol, f"{key}: relative difference {err:.2e}"
    np.testing.assert_array_equal(a["count/confusion"], b["count/confusion"])
    assert a["count/count"] == 29  # the eval batch's 3 masked examples count for nothing


@pytest.fixture(scope="module", params=["lenet5", "resnet"])
def single_device(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("none") / "none.npz"
    return request.param, run("none", request.param, out, "--devices", "1")


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_eight_devices_match_one(single_device, mode, tmp_path):
    model, reference = single_device
    assert_same_run(reference, run(mode, model, tmp_path / f"{mode}.npz"))
    if model == "resnet":
        assert any(k.startswith("batch_stats/") for k in reference)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["mesh", "pmap"])
def test_two_processes_match_one_process(tmp_path, mode):
    reference = run(mode, "resnet", tmp_path / "one.npz")
    address = f"127.0.0.1:{free_port()}"
    out = tmp_path / "two.npz"
    procs = [subprocess.Popen([sys.executable, RUN, mode, "resnet", str(out), "--devices", "4",
                               "--process_id", str(i), "--num_processes", "2",
                               "--coordinator", address], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
        assert "devices 8 processes 2" in stdout
    assert_same_run(reference, dict(np.load(out)))


def test_gradient_accumulation_equals_one_large_batch():
    model = get_model("lenet5", num_classes=10)
    tx = optax.sgd(0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(32, 32, 32, 1)).astype(np.float32),
             "label": rng.integers(0, 10, 32).astype(np.int32)}
    results = {}
    for k in (1, 4):
        state = create_train_state(model, tx, jax.random.key(0), (32, 32, 1))
        step = jax.jit(lambda s, b, k=k: train_step(s, b, accum_steps=k))
        for _ in range(3):
            state, metrics = step(state, batch)
        results[k] = (state.params, metrics)
    for a, b in zip(jax.tree.leaves(results[1][0]), jax.tree.leaves(results[4][0])):
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a)
    assert results[1][1]["loss"] == pytest.approx(float(results[4][1]["loss"]), rel=1e-5)
    assert int(state.step) == 3  # one optimizer step per call
    with pytest.raises(ValueError, match="32 examples cannot be split into 5 equal micro-batches"):
        jax.jit(lambda s, b: train_step(s, b, accum_steps=5))(state, batch)


def test_batch_sizes_and_modes_are_validated():
    sizes = check_batch_sizes(64)
    assert sizes["per_device"] * sizes["devices"] == 64 == sizes["per_process"]
    with pytest.raises(ValueError, match="Unknown parallel mode 'dp'. Valid choices: none, pmap, mesh"):
        DataParallel("dp")
