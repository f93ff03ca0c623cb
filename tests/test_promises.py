"""What the README promises about a run and nothing else tested: checkpoint retention, Ctrl-C
(once: a checkpoint and a clean stop; twice: at once), several processes agreeing to stop,
`resume=False`, in-memory batches, `launch_local` stopping every worker when one fails, the
divergence guard on the gradient and parameter norms, the progress line, the git commit in
environment.json.

Faults come at a chosen step, never on a timer: tests/helpers/fault_at_step.py sends the
signal (or crashes) when the loop takes that step's batch."""

import dataclasses
import functools
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.config import default_config
from cnn_jax.data import from_arrays, train_dataset, train_iterator
from cnn_jax.train import loop, train_and_evaluate
from cnn_jax.train.checkpoint import Checkpointer, restore_variables
from cnn_jax.train.logs import Progress
from cnn_jax.train.loop import Preempted
from cnn_jax.train.workdir import environment, git_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "tests", "helpers", "fault_at_step.py")
_spec = importlib.util.spec_from_file_location("fault_at_step", HELPER)
fault_at_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fault_at_step)
TIMING = ("train_images_per_second", "epoch_seconds", "steps_per_second", "images_per_second")


def small_config(**changes):
    """LeNet-5 on the digits, 2 epochs of about 20 steps; a checkpoint every 4 steps."""
    config = default_config()
    config.num_epochs = 2
    config.batch_size = 64
    config.eval_batch_size = 360
    config.log_every_steps = 4
    config.checkpoint.every_steps = 4
    config.checkpoint.keep = 2
    # The worst epoch is "best", so that the best checkpoint is not among the latest two.
    config.checkpoint.best_mode = "min"
    for key, value in changes.items():
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = node[part]
        node[leaf] = value
    return config


def epoch_ends(workdir):
    """The steps that ended the run's epochs (the training split's size decides them)."""
    return [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]


def checkpoint_steps(workdir):
    return sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())


def records(path):
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v})
    return out


@pytest.fixture
def fault(monkeypatch):
    """fault(step, action): the loops run next in this process meet `action` at `step`;
    fault(None): no more faults."""
    import cnn_jax.data as data_lib
    real = data_lib.train_iterator
    monkeypatch.setattr(data_lib, "train_iterator", real)  # restored after the test

    def arm(step, action=None):
        data_lib.train_iterator = real
        if step is not None:
            fault_at_step.inject(step, action)
    return arm


# --- The progress line ------------------------------------------------------------------------

class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


class TimedTerminal(Terminal):
    """Records when each redraw ('\\r' + text) was written."""

    def __init__(self):
        super().__init__()
        self.draws = []

    def write(self, text):
        if text.startswith("\r["):
            self.draws.append(time.monotonic())
        return super().write(text)


def test_progress_rate_and_eta_come_from_recent_steps_not_the_start():
    clock, term = FakeClock(100.0), Terminal()
    progress = Progress(100, 0, batch_size=10, log=print, stream=term, clock=clock,
                        background=False)
    assert progress.interactive  # from the stream's isatty()
    clock.t = 110.0  # 10 s of compilation before the first step ends
    progress.tick(1)
    for step in range(2, 21):  # then 2 steps/s
        clock.t += 0.5
        progress.tick(step)
    progress.update(20, 0.5)
    drawn = term.getvalue()
    assert drawn.startswith("\r[") and drawn.endswith("\x1b[K")
    # 80 steps left at 2 steps/s; averaged since the start (20 steps in 19.5 s) it would be 1:18.
    assert "step 20/100 | 2.00 steps/s, 20 img/s | loss 0.5000 | 0:19 elapsed, ETA 0:40" in drawn
    assert "[####....................]  20%" in drawn
    for step in range(21, 51):  # slower: one step every 2 s, for longer than the 30 s window
        clock.t += 2.0
        progress.tick(step)
    assert progress.rate() == 0.5
    assert progress.line().endswith("ETA 1:40")


def test_progress_before_any_step_shows_no_rate():
    clock = FakeClock()
    progress = Progress(10, 0, batch_size=4, log=print, stream=Terminal(), clock=clock,
                        background=False)
    clock.t += 65
    assert progress.line() == "step 0/10 | - steps/s | 1:05 elapsed, ETA ?"
    progress.tick(1)
    assert progress.rate() is None and "ETA ?" in progress.line()


def test_progress_redraws_in_place_every_half_second_without_steps():
    term = TimedTerminal()
    progress = Progress(100, 0, batch_size=8, log=print, stream=term)  # the defaults
    progress.tick(1)  # and no step after it: a slow step, or an evaluation
    deadline = time.monotonic() + 20
    while len(term.draws) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    progress.close()
    assert len(term.draws) >= 4
    assert np.median(np.diff(term.draws)) <= 1.0  # redrawn at least every second
    out = term.getvalue()
    assert out.endswith("\r\x1b[K")  # close() clears the line
    assert out.count("\r[") == len(term.draws) and "\n" not in out  # in place, never a new line
    time.sleep(0.7)
    assert term.getvalue() == out  # the thread stopped


def test_progress_log_clears_the_line_first():
    term, logged = Terminal(), []
    progress = Progress(10, 0, batch_size=1, log=logged.append, stream=term, background=False)
    progress.tick(3)
    progress.poll()
    progress.log("epoch 1")
    assert term.getvalue().endswith("\r\x1b[K") and logged == ["epoch 1"]


def test_progress_off_a_terminal_prints_a_plain_line_every_15_seconds():
    clock, logged = FakeClock(0.0), []
    progress = Progress(1000, 0, batch_size=32, log=logged.append, interactive=False,
                        clock=clock, background=False)
    for step, t in ((1, 5.0), (2, 6.0)):
        clock.t = t
        progress.tick(step)
    progress.update(2, 1.25)  # a logged loss prints nothing by itself
    progress.poll()
    assert logged == []
    clock.t = 15.0
    progress.poll()
    clock.t = 29.0
    progress.poll()  # 14 s after the last line: nothing
    clock.t = 31.0
    progress.poll()  # no step in 25 s, still a line
    assert logged == [
        "step 2/1000 | 1.00 steps/s, 32 img/s | loss 1.2500 | 0:15 elapsed, ETA 16:38",
        "step 2/1000 | 1.00 steps/s, 32 img/s | loss 1.2500 | 0:31 elapsed, ETA 16:38"]


def test_progress_thread_prints_off_a_terminal_without_any_update():
    logged, stream = [], io.StringIO()
    progress = Progress(50, 10, batch_size=8, log=logged.append, stream=stream,
                        every_seconds=0.05)
    assert not progress.interactive
    deadline = time.monotonic() + 20
    while len(logged) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    progress.close()
    assert len(logged) >= 3 and all(line.startswith("step 10/50 | - steps/s") for line in logged)
    assert stream.getvalue() == ""  # nothing drawn: plain lines through `log` only


# --- Runs: retention, Ctrl-C, resume=False, divergence ------------------------------------------

class RecordingProgress(Progress):
    """The loop's progress line, off a terminal every 0.05 s, recording the loop's ticks."""
    ticks = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "interactive": False, "every_seconds": 0.05})

    def tick(self, step, now=None):
        RecordingProgress.ticks.append(step)
        super().tick(step, now)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, its log lines and its progress ticks."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    logged, RecordingProgress.ticks = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "Progress", RecordingProgress)
        train_and_evaluate(small_config(), str(workdir), log=logged.append)
    return workdir, logged, list(RecordingProgress.ticks)


def test_the_loop_ticks_every_step_and_the_progress_line_comes_on_time(reference):
    workdir, logged, ticks = reference
    total = epoch_ends(workdir)[-1]
    assert ticks == list(range(1, total + 1))
    # on its timer (every 0.05 s here), not only when the loop logs a loss
    lines = [line for line in logged if line.startswith("step ")]
    assert lines and all(re.fullmatch(rf"step \d+/{total} \| .* elapsed, ETA [\d:?]+", x)
                         for x in lines)


def test_checkpoints_kept_are_the_latest_two_plus_the_best(reference):
    workdir, _, _ = reference
    epochs = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    metric = small_config().checkpoint.best_metric
    best = min(epochs, key=lambda e: e[metric])["step"]  # best_mode=min
    saved = sorted({*range(4, epoch_ends(workdir)[-1] + 1, 4), *epoch_ends(workdir)})
    assert best not in saved[-2:]  # so the test can tell "the best" from "the latest"
    assert checkpoint_steps(workdir) == sorted({*saved[-2:], best})


def test_checkpointer_retention_max_and_min(tmp_path):
    accuracy = {2: 0.9, 4: 0.1, 6: 0.5, 8: 0.3}  # steps 1..8; metrics at the "epoch ends"
    for mode, best in (("max", 2), ("min", 4)):
        directory = str(tmp_path / mode)
        ckpt = Checkpointer(directory, keep=2, best_metric="test_accuracy", best_mode=mode)
        for step in range(1, 9):
            metrics = {"test_accuracy": accuracy[step]} if step in accuracy else None
            ckpt.save(step, {"w": np.full(3, step, np.float32)}, {}, metrics=metrics)
        ckpt.wait()
        ckpt.close()
        assert sorted(int(p) for p in os.listdir(directory) if p.isdigit()) == sorted({7, 8, best})
        reopened = Checkpointer(directory, keep=2, best_metric="test_accuracy", best_mode=mode)
        assert reopened.best_step() == best and reopened.steps() == sorted({7, 8, best})
        reopened.close()


def test_environment_records_the_git_commit(reference):
    workdir, _, _ = reference
    session = json.load(open(workdir / "environment.json"))["sessions"][0]
    top = subprocess.run(["git", "-C", ROOT, "rev-parse", "--show-toplevel"], capture_output=True,
                         text=True)
    if top.returncode or os.path.realpath(top.stdout.strip()) != os.path.realpath(ROOT):
        assert session["git"] is None
        return
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert session["git"]["commit"] == head and isinstance(session["git"]["dirty"], bool)


def test_git_state_commit_dirty_and_absent(tmp_path):
    def git(*args, cwd=tmp_path / "repo"):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c",
                               "commit.gpgsign=false", *args], cwd=cwd, capture_output=True,
                              text=True, check=True).stdout.strip()
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "a.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "a.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert git_state(str(repo)) == {"commit": head, "dirty": False}
    (repo / "untracked.txt").write_text("runs/ and the like do not count\n")
    assert git_state(str(repo)) == {"commit": head, "dirty": False}
    (repo / "a.py").write_text("x = 2\n")
    assert git_state(str(repo)) == {"commit": head, "dirty": True}
    assert git_state(str(repo / "sub")) is None  # inside a repository, not at its top
    assert git_state(str(tmp_path)) is None  # no repository at all
    assert "git" in environment()


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes_bit_identical(reference, tmp_path,
                                                                       fault):
    ref_dir = reference[0]
    workdir = tmp_path / "run"
    fault(6, "SIGINT")
    with pytest.raises(Preempted, match=r"Stopped by SIGINT after step 6: saved a checkpoint at "
                                        r"step 6 .*run the same command again to resume"):
        train_and_evaluate(small_config(), str(workdir), log=lambda s: None)
    assert checkpoint_steps(workdir) == [4, 6]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    fault(None)  # the rerun
    logged = []
    train_and_evaluate(small_config(), str(workdir), log=logged.append)
    assert "Resuming from the checkpoint of step 6" in "\n".join(logged)
    a, _ = restore_variables(str(ref_dir))
    b, _ = restore_variables(str(workdir))
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert records(workdir / "metrics.jsonl") == records(ref_dir / "metrics.jsonl")


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """Two Ctrl-C at the batch of step 6, the second while the first is being honoured: the run
    ends there (in a subprocess: a second signal may end the process itself), training and
    saving nothing more."""
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, HELPER, "--at", "6", "--do", "SIGINT,SIGINT", "--", "--config",
         "experiments/configs/lenet5_digits.py", "--workdir", str(workdir),
         "--config.num_epochs=2", "--config.batch_size=64", "--config.log_every_steps=4",
         "--config.checkpoint.every_steps=4"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True, text=True, timeout=400)
    assert result.returncode != 0 and "Stopped by" not in result.stderr, result.stderr[-3000:]
    # Step 6 was neither trained nor saved (step 4's save may or may not have finished).
    assert checkpoint_steps(workdir) in ([], [4])
    assert [r["step"] for r in records(workdir / "steps.jsonl")] == [4]


def test_resume_false_discards_the_checkpoints_and_starts_over(reference, tmp_path):
    ref_dir = reference[0]
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    changed = small_config(**{"optimizer.learning_rate": 0.02, "checkpoint.every_steps": 0})
    with pytest.raises(ValueError, match="holds checkpoints of a different run"):
        train_and_evaluate(changed, str(workdir), log=lambda s: None)
    logged = []
    changed.resume = False
    train_and_evaluate(changed, str(workdir), log=logged.append)
    text = "\n".join(logged)
    assert "resume=False: discarding the checkpoints" in text and "Resuming" not in text
    ends = epoch_ends(workdir)
    assert checkpoint_steps(workdir) == ends  # epoch ends only: none of the old run's left
    sessions = json.load(open(workdir / "environment.json"))["sessions"]
    assert [s["start_step"] for s in sessions] == [0]
    old = {r["step"]: r for r in records(ref_dir / "steps.jsonl")}
    new = {r["step"]: r for r in records(workdir / "steps.jsonl")}
    assert min(new) == 4 and max(new) == ends[-1] and len(set(old) & set(new)) >= 6
    # Trained again from step 1 at the new learning rate: the cosine schedule scaled by 0.02/0.05.
    np.testing.assert_allclose([new[s]["learning_rate"] for s in sorted(set(old) & set(new))],
                               [0.4 * old[s]["learning_rate"] for s in sorted(set(old) & set(new))],
                               rtol=1e-6)
    assert [e["epoch"] for e in records(workdir / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize("key,value,name", [
    ("grad_norm", np.inf, r"grad(ient)? norm became inf"),
    ("param_norm", np.nan, r"param(eter)? norm became nan")])
def test_divergence_guard_on_the_gradient_and_parameter_norms(tmp_path, monkeypatch, key, value,
                                                              name):
    """A norm that is not finite while the loss still is (injected at step 7) stops the run before
    step 8's checkpoint is saved."""
    real = loop.train_step

    def faulty(state, batch, **kwargs):
        new_state, metrics = real(state, batch, **kwargs)
        bad = jnp.where(state.step == 6, jnp.asarray(value, jnp.float32), metrics[key])
        return new_state, {**metrics, key: bad}

    monkeypatch.setattr(loop, "train_step", faulty)
    config = small_config(log_every_steps=2)
    with pytest.raises(FloatingPointError) as error:
        train_and_evaluate(config, str(tmp_path), log=lambda s: None)
    message = str(error.value)
    assert re.search(name + r" at step 7 \(epoch 1\)", message), message
    assert "the last good checkpoint is step 4" in message
    assert checkpoint_steps(tmp_path) == [4]
    steps = [json.loads(line) for line in open(tmp_path / "steps.jsonl")]
    assert [r["step"] for r in steps] == [2, 4, 6] and all(np.isfinite(r["loss"]) for r in steps)


# --- Data ---------------------------------------------------------------------------------------

class ExampleByExample:
    """The same examples, read one at a time (as from files): not an in-memory source."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i].copy(), "label": int(self.labels[i])}


@pytest.mark.parametrize("process_count", [1, 2])
def test_in_memory_batches_equal_reading_example_by_example(process_count):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (53, 5, 4, 3), np.uint8)
    labels = rng.integers(0, 7, 53)
    in_memory = from_arrays(images, labels, [str(i) for i in range(7)])
    one_by_one = dataclasses.replace(in_memory, source=ExampleByExample(images, labels))
    for index in range(process_count):
        make = functools.partial(train_dataset, batch_size=8, seed=3, num_epochs=2,
                                 process_index=index, process_count=process_count)
        a, b = make(in_memory), make(one_by_one)
        assert len(a) == len(b) == 2 * (53 // process_count // 8)
        for step in range(len(a)):
            np.testing.assert_array_equal(a[step]["image"], b[step]["image"])
            np.testing.assert_array_equal(a[step]["label"], b[step]["label"])
        read = functools.partial(train_iterator, batch_size=8, seed=3, num_epochs=2, start_step=3,
                                 process_index=index, process_count=process_count)
        for x, y in zip(read(in_memory), read(one_by_one), strict=True):  # through the threads
            np.testing.assert_array_equal(x["image"], y["image"])


# --- Several processes --------------------------------------------------------------------------

def launch(workdir, at, action, *train_args, grace=60, timeout=400):
    return subprocess.run(
        [sys.executable, HELPER, "--launch", "--at", str(at), "--do", action, "--process", "1",
         "--", "--num_processes", "2", "--devices_per_process", "4", "--grace", str(grace), "--",
         "--config", "experiments/configs/lenet5_digits.py", "--workdir", str(workdir),
         "--config.num_epochs=1", "--config.parallel=mesh", "--config.log_every_steps=4",
         *train_args], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
        text=True, timeout=timeout)


@pytest.mark.slow
def test_two_processes_agree_to_stop_when_one_is_signalled(tmp_path):
    """Process 1 alone gets Ctrl-C at step 10; they agree every 4 steps, so both save step 12
    and stop (resuming from it is the single-process resume, tested above)."""
    workdir = tmp_path / "run"
    result = launch(workdir, 10, "SIGINT")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Stopped by SIGINT after step 12: saved a checkpoint at step 12" in result.stderr
    assert ("Stopped by a signal to another process after step 12: saved a checkpoint at step 12"
            in result.stderr)
    assert checkpoint_steps(workdir) == [12]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_launch_local_stops_every_worker_when_one_fails(tmp_path):
    start = time.monotonic()
    # Process 1 crashes at step 6; process 0, blocked in a collective, cannot honour SIGTERM and
    # is killed after the grace period (kept short here).
    result = launch(tmp_path / "run", 6, "exit:3", grace=5)
    assert result.returncode != 0
    assert re.search(r"process exit codes: \[-?\d+, 3\]", result.stderr), result.stderr[-3000:]
    pids = [int(p) for p in re.search(r"started 2 processes .*: \[(\d+), (\d+)\]",
                                      result.stdout).groups()]
    for pid in pids:  # none left running (the launcher waited for each)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert time.monotonic() - start < 300
