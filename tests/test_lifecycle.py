"""A run's lifecycle, as a researcher meets it: killed (SIGKILL, also in the middle of a
checkpoint save) and resumed to the same parameters bit for bit; stopped by SIGTERM with a
checkpoint, promptly even when a step takes seconds, and at once on a second signal; torn log
lines and damaged checkpoints (arrays or metadata) skipped, repaired or refused; a workdir
locked against a second run; a finished run left alone; divergence stopped with the last good
checkpoint kept, and an empty run restarted with a new config; the launcher of several
processes leaving none behind; logs read back; the report; a sweep that never reruns a finished
trial.

Signals are sent by the run itself at a given step (CNN_JAX_TEST_SIGNAL_AT_STEP, see
cnn_jax/train/stopping.py) once that step is computed, not by polling: no race with the run."""

import glob
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from cnn_jax.config import default_config
from cnn_jax.train import train_and_evaluate
from cnn_jax.train.checkpoint import restore_variables
from cnn_jax.train.optim import make_schedule
from cnn_jax.train.workdir import LOCK_FILE, WorkdirLocked, workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}
# Digits, LeNet-5: 40 steps an epoch (1,292 training images after validation's 145), 80 in
# all; a checkpoint every 8 steps and at epoch ends.
RUN = ("--config", "experiments/configs/lenet5_digits.py", "--config.num_epochs=2",
       "--config.checkpoint.every_steps=8", "--config.log_every_steps=4")
TOTAL_STEPS = 80
TIMEOUT = 300
TIMING = ("train_images_per_second", "epoch_seconds", "steps_per_second", "images_per_second")


def train(workdir, *extra, script=("-m", "experiments.train"), signal_at=""):
    """Runs the digits experiment; `signal_at`: CNN_JAX_TEST_SIGNAL_AT_STEP ("30:SIGKILL")."""
    return subprocess.run([sys.executable, *script, *RUN, "--workdir", str(workdir), *extra],
                          cwd=ROOT, env={**ENV, "CNN_JAX_TEST_SIGNAL_AT_STEP": signal_at},
                          capture_output=True, text=True, timeout=TIMEOUT)


def checkpoint_steps(workdir):
    return sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())


def stopped_at(stderr):
    """The step of `Stopped by SIGTERM after step N: ...`, checking the message."""
    message = [line for line in stderr.splitlines() if line.startswith("Stopped by SIGTERM")]
    assert message and "run the same command again to resume" in message[0], stderr[-3000:]
    return int(message[0].split("after step ")[1].split(":")[0])


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
    result = train(workdir, signal_at="30:SIGKILL")  # checkpoints of steps 8, 16, 24 before
    assert result.returncode == -signal.SIGKILL
    assert 0 < checkpoint_steps(workdir)[-1] < TOTAL_STEPS
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
    result = train(workdir, signal_at="10")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    step = stopped_at(result.stderr)
    assert step in (10, 11, 12)  # at most two steps after the one computed when the signal came
    assert os.path.isdir(workdir / "checkpoints" / str(step))
    assert not os.path.exists(workdir / LOCK_FILE)  # released
    result = train(workdir)  # and the rest of the run continues from there
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from the checkpoint of step {step}" in result.stdout
    assert_same_params(reference, workdir)


def test_torn_log_lines_are_repaired_on_resume_and_the_run_ends_bit_identical(reference,
                                                                               tmp_path):
    workdir = tmp_path / "run"
    result = train(workdir, signal_at="60")  # in epoch 2: metrics.jsonl holds epoch 1
    step = stopped_at(result.stderr)
    logged = [r["step"] for r in records(workdir / "steps.jsonl")]
    assert logged[-1] == step
    for name in ("steps.jsonl", "metrics.jsonl"):  # a crash in the middle of a log write
        with open(workdir / name, "r+b") as f:
            f.truncate(os.path.getsize(workdir / name) - 40)
    result = train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from the checkpoint of step {step}" in result.stdout
    for name in ("steps.jsonl", "metrics.jsonl"):
        assert f"{workdir / name} ended in a torn record (" in result.stderr
    assert "metrics.jsonl lacked epochs that the checkpoint of step" in result.stderr
    assert_same_params(reference, workdir)
    assert records(workdir / "metrics.jsonl") == records(reference / "metrics.jsonl")
    resumed = [r["step"] for r in records(workdir / "steps.jsonl")]
    assert resumed[:len(logged) - 1] == logged[:-1]  # the torn record alone is lost
    assert step not in resumed and resumed == sorted(set(resumed)) and resumed[-1] == TOTAL_STEPS


def _state_files(workdir, step):
    """The files holding checkpoint `step`'s arrays, largest first."""
    files = [p for p in glob.glob(str(workdir / "checkpoints" / str(step) / "state" / "**" / "*"),
                                  recursive=True) if os.path.isfile(p)]
    return sorted(files, key=os.path.getsize, reverse=True)


def test_a_bit_flipped_in_checkpoint_metadata_is_detected(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    os.remove(workdir / "final_metrics.json")  # so that the rerun resumes
    steps = checkpoint_steps(workdir)
    path = workdir / "checkpoints" / str(steps[-1]) / "meta" / "metadata"
    text = open(path).read()
    meta = json.loads(text)
    position = text.index('"train_loss": ') + len('"train_loss": ') + 3  # a digit of epoch 1's
    assert text[position].isdigit()
    with open(path, "r+b") as f:  # one bit: a digit becomes another, the JSON stays valid
        f.seek(position)
        f.write(bytes([ord(text[position]) ^ 1]))
    tampered = json.loads(open(path).read())
    assert tampered["history"][0]["train_loss"] != meta["history"][0]["train_loss"]
    result = train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"Checkpoint {workdir / 'checkpoints' / str(steps[-1])} is damaged (CheckpointError: "
            f"checkpoint {steps[-1]} does not match its checksum)") in result.stderr
    assert f"Resuming from the checkpoint of step {steps[-2]}" in result.stdout
    assert_same_params(reference, workdir)
    assert records(workdir / "metrics.jsonl") == records(reference / "metrics.jsonl")


def test_rerunning_a_finished_run_changes_nothing(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)

    def files():
        return {p: (os.path.getmtime(p), open(p, "rb").read())
                for p in glob.glob(str(workdir / "**"), recursive=True) if os.path.isfile(p)}

    before = files()
    time.sleep(0.01)
    result = train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"The run in {workdir} is finished (step {TOTAL_STEPS} of {TOTAL_STEPS}); nothing to "
            f"do. Its results: {workdir / 'final_metrics.json'}") in result.stdout
    assert "Resuming" not in result.stdout and "epoch" not in result.stdout
    assert files() == before  # final_metrics.json, environment.json, logs: all untouched


def test_a_second_run_on_a_locked_workdir_is_refused(tmp_path):
    workdir = tmp_path / "run"
    with workdir_lock(str(workdir)):  # this process holds it, as a running run would
        holder = json.load(open(workdir / LOCK_FILE))
        assert holder["pid"] == os.getpid() and holder["host"]
        result = train(workdir)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert (f"{workdir} is in use by another run: process {os.getpid()} on host "
                f"{holder['host']}") in errors[0]
        assert os.listdir(workdir) == [LOCK_FILE]  # nothing written
        with pytest.raises(WorkdirLocked, match=f"process {os.getpid()}"):
            with workdir_lock(str(workdir)):
                pass
    assert not workdir.exists()  # released, and the directory it made removed again

    # A lock left by a process that has ended (SIGKILL, a second Ctrl-C) is taken over.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    os.makedirs(workdir)
    with open(workdir / LOCK_FILE, "w") as f:
        json.dump({"host": holder["host"], "pid": int(dead.stdout)}, f)
    with pytest.warns(UserWarning, match=f"Taking over the stale lock .* of process "
                                         f"{int(dead.stdout)} on host"):
        with workdir_lock(str(workdir)):
            assert json.load(open(workdir / LOCK_FILE))["pid"] == os.getpid()
    assert os.listdir(workdir) == []


SLOW_CONFIG = """
import ml_collections
from experiments.configs.lenet5_digits import get_config as digits_config


def get_config():  # VGG-11 (CIFAR head) on the digits, 32 a batch: a step of seconds on 2 cores
    config = digits_config()
    config.model = ml_collections.ConfigDict({"name": "vgg11_cifar", "dtype": "float32"})
    config.log_every_steps = 40  # no sync for 40 steps: all the room a loop could run ahead
    return config
"""


def _slow_run(tmp_path, name, signal_at):
    (tmp_path / "slow_config.py").write_text(SLOW_CONFIG)
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.train", "--config", str(tmp_path / "slow_config.py"),
         "--workdir", str(tmp_path / name)],
        cwd=ROOT, env={**ENV, "CNN_JAX_TEST_SIGNAL_AT_STEP": signal_at},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_stop_is_prompt_when_a_step_takes_seconds_and_a_second_signal_ends_at_once(tmp_path):
    """Without the bound on run-ahead the loop queues steps up to the next interval (40 here)
    or XLA's own limit, and a stop waits for all of them: with the bound removed this run
    stopped after step 34, not 3 or 4, minutes after the signal."""
    proc = _slow_run(tmp_path, "one", "2")  # SIGTERM once step 2 is computed
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr[-3000:]
    assert stopped_at(stderr) in (2, 3, 4)  # within two steps of step 2
    assert "SIGTERM: saving a checkpoint after this step, then stopping" in stderr

    proc = _slow_run(tmp_path, "two", "2,3:SIGINT")  # and Ctrl-C once step 3 is computed
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGINT, stderr[-3000:]  # ended by the signal itself
    assert "Stopped by" not in stderr and "Traceback" not in stderr
    assert not glob.glob(str(tmp_path / "two" / "checkpoints" / "[0-9]*"))


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
    # The learning rate quoted is the schedule's at that step, below the peak while warming up.
    quoted = float(message.split("The learning rate was ")[1].split()[0])
    steps_per_epoch = 1292 // 32  # 1,437 less the 145 carved out for validation
    schedule = make_schedule(config.schedule, 1e4, 2 * steps_per_epoch, steps_per_epoch)
    assert quoted == pytest.approx(float(schedule(step - 1)), rel=1e-3) and quoted < 1e4 / 2
    assert "(config.optimizer.learning_rate=10000.0 on the cosine schedule)" in message


def test_a_run_that_diverged_before_any_checkpoint_restarts_with_a_new_config(tmp_path):
    config = default_config()
    config.num_epochs = 1
    config.optimizer.learning_rate = 1e6  # diverges in the first steps, before any save
    config.log_every_steps = 1
    with pytest.raises(FloatingPointError, match="no checkpoint was saved"):
        train_and_evaluate(config, str(tmp_path), log=lambda s: None)
    assert os.listdir(tmp_path / "checkpoints") == []
    config.optimizer.learning_rate = 0.05
    _, history = train_and_evaluate(config, str(tmp_path), log=lambda s: None)
    assert [r["epoch"] for r in history] == [1]
    assert json.load(open(tmp_path / "config.json"))["optimizer"]["learning_rate"] == 0.05
    sessions = json.load(open(tmp_path / "environment.json"))["sessions"]
    assert [s["start_step"] for s in sessions] == [0]  # a new run, not a resumption
    assert [r["epoch"] for r in records(tmp_path / "metrics.jsonl")] == [1]


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


def test_report_plots_draw_the_logged_values(monkeypatch, tmp_path):
    """What the report's plots show: the curves are the logged values (accuracy in %), the
    learning rate the logged schedule, the confusion matrix its counts, cell by cell."""
    import numpy as np
    from experiments import report
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or path)
    steps = [{"step": s, "loss": 1.0 / s, "accuracy": 0.1 * s, "learning_rate": 0.5 / s}
             for s in (1, 2, 3, 4)]
    epochs = [{"step": 2, "train_accuracy": 0.3, "val_accuracy": 0.4},
              {"step": 4, "train_accuracy": 0.6, "val_accuracy": 0.7, "test_accuracy": 0.65}]
    report.plot_curves(epochs, steps, "accuracy", "accuracy (%)", str(tmp_path / "a.png"))
    lines = {line.get_label(): line.get_xydata() for line in figures[-1].axes[0].lines}
    for label, expected in (("train accuracy (logged steps)", [[1, 10], [2, 20], [3, 30], [4, 40]]),
                            ("train accuracy (epoch)", [[2, 30], [4, 60]]),
                            ("validation accuracy (epoch)", [[2, 40], [4, 70]]),
                            ("test accuracy (end of training)", [[4, 65]])):
        np.testing.assert_allclose(lines[label], expected, rtol=1e-12)
    assert len(lines) == 4
    report.plot_learning_rate(steps, str(tmp_path / "lr.png"))
    np.testing.assert_allclose(figures[-1].axes[0].lines[0].get_ydata(), [0.5, 0.25, 0.5 / 3, 0.125])
    confusion = [[5, 1, 0], [2, 7, 1], [0, 0, 9]]
    report.plot_confusion(confusion, ["a", "b", "c"], str(tmp_path / "c.png"))
    ax = figures[-1].axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), confusion)
    assert [t.get_text() for t in ax.texts] == [str(v) for row in confusion for v in row]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


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


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_launcher_sigterm_stops_every_worker_with_a_checkpoint_and_leaves_no_process(tmp_path):
    workdir = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "experiments.launch_local", "--num_processes", "2",
         "--devices_per_process", "1", "--",
         "--config", "experiments/configs/lenet5_digits.py", "--config.parallel=mesh",
         "--workdir", str(workdir),
         "--config.num_epochs=1000", "--config.checkpoint.every_steps=5",
         "--config.log_every_steps=5"],  # a run far too long to end by itself
        cwd=ROOT, env={**ENV, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        started = launcher.stdout.readline()
        pids = [int(p) for p in re.findall(r"\d+", started.split(":")[-1])]
        assert started.startswith("started 2 processes") and len(pids) == 2, started
        deadline = time.time() + TIMEOUT  # wait until they train: a checkpoint exists
        while not glob.glob(str(workdir / "checkpoints" / "[0-9]*")):
            assert launcher.poll() is None and time.time() < deadline, launcher.stderr.read()
            time.sleep(0.2)
        launcher.send_signal(signal.SIGTERM)
        stdout, stderr = launcher.communicate(timeout=TIMEOUT)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, stderr[-3000:]
    assert not [pid for pid in pids if _alive(pid)]  # every worker ended
    stops = re.findall(r"^Stopped by (\S+) after step (\d+)", stderr, re.MULTILINE)
    assert len(stops) == 2 and stops[0][1] == stops[1][1], stderr[-3000:]  # together
    assert os.path.isdir(workdir / "checkpoints" / stops[0][1])
    assert not os.path.exists(workdir / LOCK_FILE)
