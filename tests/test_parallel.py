"""Data parallelism: the one train step under `none` (1 device), `pmap` and `mesh` (8 fake CPU
devices), and over 2 processes on 127.0.0.1 with 4 devices each, ends with the same
parameters, BatchNorm statistics, moving average of both (config.ema) and evaluation counts;
gradient accumulation equals one step on the larger batch.

The multi-device runs are subprocesses (tests/helpers/parallel_run.py): the device count is
fixed when JAX starts."""

import contextlib
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from cnn_jax.models import get_model
from cnn_jax.train.parallel import DataParallel, check_batch_sizes
from cnn_jax.train.step import create_train_state, train_step
from helpers.ports import with_free_port

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


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    """(mode, model) -> the run on 8 devices in one process, made once for both tests below."""
    cache = {}

    def get(mode, model):
        if (mode, model) not in cache:
            out = tmp_path_factory.mktemp(mode) / f"{model}.npz"
            cache[mode, model] = run(mode, model, out)
        return cache[mode, model]
    return get


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_eight_devices_match_one(single_device, eight_devices, mode):
    model, reference = single_device
    assert_same_run(reference, eight_devices(mode, model))
    assert any(k.startswith("ema/params/") for k in reference)
    if model == "resnet":
        assert any(k.startswith("batch_stats/") for k in reference)
        assert any(k.startswith("ema/batch_stats/") for k in reference)


@pytest.mark.parametrize("mode", ["mesh", "pmap"])
def test_two_processes_match_one_process(eight_devices, tmp_path, mode):
    reference = eight_devices(mode, "resnet")  # one process with the same 8 devices
    out = tmp_path / "two.npz"

    def two_processes(address):
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
        return (procs, outputs), "".join(stderr for _, stderr in outputs)

    procs, outputs = with_free_port(two_processes)  # again on a new port if it was taken
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
    assert check_batch_sizes(36, 4)["per_device"] == 9
    with pytest.raises(ValueError, match="config.batch_size=36 must be divisible by the 8 devices"
                                         r" \(1 process\(es\)\) to split evenly; try 32"):
        check_batch_sizes(36, 8)
    with pytest.raises(ValueError, match="Unknown parallel mode 'dp'. Valid choices: none, pmap, mesh"):
        DataParallel("dp")


def launch(*args, devices=8, module="experiments.train", timeout=TIMEOUT):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    # Its own process group, so that on a timeout the launcher's children are killed too.
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None or module != "experiments.train":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


DIGITS = ("--config", "experiments/configs/lenet5_digits.py", "--config.num_epochs=1")


def read_records(workdir):
    import json
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def test_experiment_in_mesh_mode_equals_one_device(tmp_path):
    """The launcher end to end: with the same global batches (one process), mesh on 8 devices
    trains the same model as one device, augmentation included."""
    runs = {}
    for mode, devices in (("none", 1), ("mesh", 8), ("pmap", 8)):
        result = launch(*DIGITS, "--workdir", str(tmp_path / mode), f"--config.parallel={mode}",
                        devices=devices)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"parallel={mode}: {devices} device(s)" in result.stdout
        runs[mode] = read_records(tmp_path / mode)[-1]
    assert "32 global, 32 per process, 4 per device" in result.stdout
    assert runs["mesh"]["test_accuracy"] == runs["none"]["test_accuracy"]
    assert runs["mesh"]["test_loss"] == pytest.approx(runs["none"]["test_loss"], rel=1e-4)
    # pmap draws augmentations per device, so its run differs in its random crops only.
    # (One epoch on one device: 81.7% measured; other random crops move it by a few points.)
    assert abs(runs["pmap"]["test_accuracy"] - runs["none"]["test_accuracy"]) <= 0.10
    assert runs["pmap"]["test_num_examples"] == 360


def test_launch_local_runs_two_processes_and_one_writes(tmp_path):
    workdir = tmp_path / "run"
    result = launch("--num_processes", "2", "--devices_per_process", "4", "--", *DIGITS,
                    "--workdir", str(workdir), "--config.parallel=mesh",
                    module="experiments.launch_local", devices=1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("parallel=mesh: 8 device(s) (cpu) in 2 process(es)") == 1
    records = read_records(workdir)
    assert len(records) == 1 and records[0]["test_num_examples"] == 360
    assert records[0]["step"] == 1292 // 2 // 16  # each reads half of train less validation
    # The same 40 steps of 32 as one process (81.7% measured there with 44 steps), in other
    # batches.
    assert records[0]["test_accuracy"] >= 0.6


@pytest.mark.parametrize("override,devices,match", [
    ("--config.batch_size=30 --config.parallel=mesh", 8,
     "config.batch_size=30 must be divisible by the 8 devices"),
    ("--config.parallel=dp", 1, "Unknown parallel mode 'dp'. Valid choices: none, pmap, mesh"),
    ("--config.model.dtype=int8", 1, "Unknown config.model.dtype 'int8'. Valid choices: float32"),
    ("--config.grad_accum_steps=3", 1, "per-device batch (32) must be divisible by "
                                       "config.grad_accum_steps=3"),
])
def test_bad_scale_settings_fail_clearly(tmp_path, override, devices, match):
    result = launch(*DIGITS, "--workdir", str(tmp_path / "run"), *override.split(),
                    devices=devices)
    assert result.returncode != 0 and match in result.stderr
    assert not (tmp_path / "run").exists()


def test_bf16_trains_the_default_experiment_within_one_point_of_float32():
    from cnn_jax.train import train_and_evaluate
    from experiments.configs.lenet5_digits import get_config

    accuracy = {}
    for dtype in ("float32", "bfloat16"):
        config = get_config()
        config.model.dtype = dtype
        state, history = train_and_evaluate(config, None, log=lambda s: None)
        accuracy[dtype] = history[-1]["test_accuracy"]
        # Parameters and optimizer state stay float32 whatever the compute dtype.
        floats = [x for x in jax.tree.leaves((state.params, state.opt_state))
                  if np.issubdtype(x.dtype, np.floating)]  # (optax also keeps int32 counts)
        assert floats and all(x.dtype == np.float32 for x in floats)
    print(f"test accuracy: {accuracy}")
    assert abs(accuracy["bfloat16"] - accuracy["float32"]) <= 0.01


def test_bf16_computes_in_bf16_with_float32_logits():
    model = get_model("lenet5", num_classes=10, dtype=jax.numpy.bfloat16)
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 1), np.float32))
    jaxpr = str(jax.make_jaxpr(model.apply)(variables, np.zeros((2, 32, 32, 1), np.float32)))
    assert "conv_general_dilated" in jaxpr and "bf16[2,28,28,6]" in jaxpr
    logits = model.apply(variables, np.zeros((2, 32, 32, 1), np.float32))
    assert logits.dtype == np.float32
