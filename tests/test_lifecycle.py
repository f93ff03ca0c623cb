"""A run's lifecycle, as a researcher meets it: killed (SIGKILL, also in the middle of a
checkpoint save) and resumed to the same parameters bit for bit; stopped by SIGTERM with a
checkpoint; damaged checkpoints skipped or refused; divergence stopped with the last good
checkpoint kept; logs read back; the report; a sweep that never reruns a finished trial."""

import glob
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from cnn_jax.config import default_config
from cnn_jax.train import train_and_evaluate
from cnn_jax.train.checkpoint import restore_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}
# Digits, LeNet-5: 40 steps an epoch (1,292 training images after validation's 145), 80 in
# all; a checkpoint every 8 steps and at epoch ends.
RUN = ("--config", "experiments/configs/lenet5_digits.py", "--config.num_epochs=2",
       "--config.checkpoint.every_steps=8", "--config.log_every_steps=4")
TOTAL_STEPS = 80
TIMEOUT = 300
TIMING = ("train_images_per_second", "epoch_seconds", "steps_per_second", "images_per_second")


def train(workdir, *extra, script=("-m", "experiments.train")):
    return subprocess.run([sys.executable, *script, *RUN, "--workdir", str(workdir), *extra],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def start(workdir, *extra):
    return subprocess.Popen([sys.executable, "-m", "experiments.train", *RUN,
                             "--workdir", str(workdir), *extra], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc, workdir, at_least):
    """Blocks until `workdir` holds a finished checkpoint of step >= at_least."""
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        steps = [int(os.path.basename(p)) for p in glob.glob(str(workdir / "checkpoints" / "*"))
                 if os.path.basename(p).isdigit()]
        if steps and max(steps) >= at_least:
            return max(steps)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("no checkpoint appeared")


def records(path):
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def assert_same_params(workdir_a, workdir_b):
    a, _ = restore_variables(str(workdir_a))
    b, _ = restore_variables(str(workdir_b))
    leaves_a, leaves_b = (sorted(_flat(v).items()) for v in (a, b))
    assert [k for k, _ in leaves_a] == [k for k, _ in leaves_b]
    for (key, x), (_, y) in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y, err_msg=key)  # bit-identical, not close


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v})
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    result = train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_sigkill_mid_run_then_resume_ends_bit_identical(reference, tmp_path):
    workdir = tmp_path / "run"
    proc = start(workdir)
    wait_for_checkpoint(proc, workdir, 24)  # a few steps after it, whichever step it is on
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(os.path.basename(p)) for p in glob.glob(str(workdir / "checkpoints/*"))
                    if os.path.basename(p).isdigit())
    assert killed_at < TOTAL_STEPS
    result = train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from the checkpoint of step" in result.stdout
    assert_same_params(reference, workdir)
    assert records(workdir / "metrics.jsonl") == records(reference / "metrics.jsonl")
    steps = [r["step"] for r in records(workdir / "steps.jsonl")]
    assert steps == sorted(set(steps))  # the killed session's later records were dropped
    env = json.load(open(workdir / "environment.json"))
    assert len(env["sessions"]) == 2 and env["sessions"][1]["start_step"] > 0


def test_sigkill_during_a_checkpoint_save_then_resume_ends_bit_identical(reference, tmp_path):
    workdir = tmp_path / "run"
    result = train(workdir, "--kill_at_save_of", "32",
                   script=(os.path.join(ROOT, "tests", "helpers", "kill_during_save.py"),))
    assert result.returncode == -signal.SIGKILL
    assert glob.glob(str(workdir / "checkpoints" / "32.orbax-checkpoint-tmp*"))  # half-saved
    assert not os.path.exists(workdir / "checkpoints" / "32")
    result = train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from the checkpoint of step 24" in result.stdout
    assert_same_params(reference, workdir)
    assert records(workdir / "metrics.jsonl") == records(reference / "metrics.jsonl")


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(reference, tmp_path):
    workdir = tmp_path / "run"
    proc = start(workdir)
    wait_for_checkpoint(proc, workdir, 8)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    message = [line for line in stderr.splitlines() if line.startswith("Stopped by SIGTERM")]
    assert message and "run the same command again to resume" in message[0]
    step = int(message[0].split("after step ")[1].split(":")[0])
    assert step < TOTAL_STEPS and os.path.isdir(workdir / "checkpoints" / str(step))
    result = train(workdir)  # and the rest of the run continues from there
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from the checkpoint of step {step}" in result.stdout
    assert_same_params(reference, workdir)


def _state_files(workdir, step):
    """The files holding checkpoint `step`'s arrays, largest first."""
    files = [p for p in glob.glob(str(workdir / "checkpoints" / str(step) / "state" / "**" / "*"),
                                  recursive=True) if os.path.isfile(p)]
    return sorted(files, key=os.path.getsize, reverse=True)


def test_damaged_checkpoints_are_skipped_with_a_warning_or_refused(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    steps = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
    assert steps[-1] == TOTAL_STEPS and len(steps) >= 3
    with open(_state_files(workdir, steps[-1])[0], "r+b") as f:  # the newest: truncated
        f.truncate(os.path.getsize(f.name) // 2)
    with open(_state_files(workdir, steps[-2])[0], "r+b") as f:  # the one before: bytes flipped
        f.seek(os.path.getsize(f.name) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.remove(workdir / "final_metrics.json")
    result = train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Checkpoint {workdir / 'checkpoints' / str(steps[-1])} is damaged" in result.stderr
    assert f"Checkpoint {workdir / 'checkpoints' / str(steps[-2])} is damaged" in result.stderr
    assert f"Resuming from the checkpoint of step {steps[-3]}" in result.stdout
    assert_same_params(reference, workdir)  # retrained from the good one to the same end

    for step in sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()):
        for path in _state_files(workdir, step):
            open(path, "w").close()
    result = train(workdir)
    assert result.returncode != 0
    assert "None of the checkpoints" in result.stderr and "could be restored" in result.stderr
    assert "Resuming" not in result.stdout and "epoch   1/2" not in result.stdout


def test_divergence_stops_with_the_step_named_and_keeps_the_last_good_checkpoint(tmp_path):
    config = default_config()
    config.num_epochs = 2
    config.optimizer.learning_rate = 1e4
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1.0  # small steps first, so good checkpoints come first
    config.checkpoint.every_steps = 2
    config.log_every_steps = 1
    with pytest.raises(FloatingPointError) as error:
        train_and_evaluate(config, str(tmp_path), log=lambda s: None)
    message = str(error.value)
    step = int(message.split(" at step ")[1].split()[0])
    assert "the last good checkpoint is step" in message
    last_good = int(message.split("the last good checkpoint is step ")[1].split()[0])
    assert 0 < last_good < step
    variables, _ = restore_variables(str(tmp_path))  # intact, and finite
    steps = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
    assert steps[-1] == last_good
    assert all(np.isfinite(x).all() for x in _flat(variables).values())


def _read_tensorboard(directory):
    """{tag: [(step, value)]} from TensorBoard event files (TFRecord framing of Event protos)."""
    from tensorboardX.proto import event_pb2
    scalars = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_logs_read_back(reference):
    steps = [json.loads(line) for line in open(reference / "steps.jsonl")]
    epochs = [json.loads(line) for line in open(reference / "metrics.jsonl")]
    assert [e["step"] for e in epochs] == [40, 80]
    assert {"loss", "accuracy", "grad_norm", "learning_rate", "steps_per_second",
            "images_per_second"} <= set(steps[0])
    tensorboard = _read_tensorboard(reference / "tensorboard")
    assert [s for s, _ in tensorboard["train/loss"]] == [r["step"] for r in steps]
    np.testing.assert_allclose([v for _, v in tensorboard["train/loss"]],
                               [r["loss"] for r in steps], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in tensorboard["epoch/val_accuracy"]],
                               [e["val_accuracy"] for e in epochs], rtol=1e-6)
    assert "train/learning_rate" in tensorboard and "train/grad_norm" in tensorboard
    env = json.load(open(reference / "environment.json"))
    assert env["seed"] == 0 and env["sessions"][0]["packages"]["jax"]
    assert env["sessions"][0]["devices"]
    assert json.load(open(reference / "config.json"))["checkpoint"]["every_steps"] == 8


def test_rerun_from_the_saved_config_reproduces_the_run(reference, tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.train", "--config",
                             str(reference / "config.py"), "--workdir", str(tmp_path / "again")],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert records(tmp_path / "again" / "metrics.jsonl") == records(reference / "metrics.jsonl")


def test_report_writes_plots_and_summary(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    result = subprocess.run([sys.executable, "-m", "experiments.report", str(workdir)], cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    for name in ("loss", "accuracy", "learning_rate", "confusion_matrix"):
        path = workdir / "report" / f"{name}.png"
        assert path.stat().st_size > 5000
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    summary = open(workdir / "report" / "summary.md").read()
    final = json.load(open(workdir / "final_metrics.json"))
    assert f"| last | {final['epoch']} | {final['accuracy']:.2%} |" in summary
    assert "| 9 |" in summary and "lenet5 on digits" in summary


def test_a_different_config_is_not_resumed(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    result = train(workdir, "--config.optimizer.name=adam")
    assert result.returncode != 0
    assert "holds checkpoints of a different run" in result.stderr
    assert "optimizer.name: 'sgd' -> 'adam'" in result.stderr
    assert json.load(open(workdir / "config.json"))["optimizer"]["name"] == "sgd"  # untouched


def test_sweep_runs_a_grid_once(tmp_path):
    command = [sys.executable, "-m", "experiments.sweep", "--config",
               "experiments/configs/lenet5_digits.py", "--workdir", str(tmp_path),
               "--param", "optimizer.learning_rate=0.02,0.05", "--param", "batch_size=64,128",
               "--config.num_epochs=1", "--config.eval_batch_size=360"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(": training") == 4
    table = open(tmp_path / "sweep.md").read()
    assert sum(line.startswith("| 00") for line in table.splitlines()) == 4  # a row per trial
    rows = list(open(tmp_path / "sweep.csv"))[1:]
    assert len(rows) == 4 and (tmp_path / "sweep.png").stat().st_size > 5000
    mtimes = {p: os.path.getmtime(p) for p in glob.glob(str(tmp_path / "*" / "metrics.jsonl"))}
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("finished before, skipped") == 4 and ": training" not in result.stdout
    assert mtimes == {p: os.path.getmtime(p) for p in mtimes}
    assert list(open(tmp_path / "sweep.csv"))[1:] == rows


def test_sweep_bad_input(tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.sweep", "--config",
                             "experiments/configs/lenet5_digits.py", "--workdir", str(tmp_path),
                             "--param", "optimizer.lr=0.1,0.2"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert "Unknown config key 'optimizer.lr'" in result.stderr and "learning_rate" in result.stderr
    result = subprocess.run([sys.executable, "-m", "experiments.sweep", "--config",
                             "experiments/configs/lenet5_digits.py", "--workdir", str(tmp_path),
                             "--param", "batch_size=32,many"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2 and "--param batch_size" in result.stderr
    assert "int" in result.stderr
