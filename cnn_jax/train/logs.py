"""What a run writes as it goes: scalars to JSON lines and TensorBoard event files, and a
progress display.

    writer = MetricWriter(workdir, resume_step=0)
    writer.write("steps", step, {"loss": 0.3, "learning_rate": 0.1})  # steps.jsonl, train/loss
    writer.write("metrics", step, {"epoch": 1, "test_accuracy": 0.9})  # metrics.jsonl, epoch/...

A resumed run first drops the records after the step it resumes from, so the files read as one
uninterrupted run (TensorBoard is told the same with `purge_step`).
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from typing import Callable

from tensorboardX import SummaryWriter

TENSORBOARD_GROUP = {"steps": "train", "metrics": "epoch"}


def truncate_jsonl(path: str, last_step: int) -> list[dict]:
    """Keeps the records of `path` with step <= last_step (rewritten atomically); returns them."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    records = [r for r in records if r["step"] <= last_step]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(path + ".tmp", path)
    return records


class MetricWriter:
    def __init__(self, workdir: str, resume_step: int = 0):
        self.workdir = workdir
        self.files = {}
        for name in TENSORBOARD_GROUP:
            path = os.path.join(workdir, f"{name}.jsonl")
            if resume_step:
                truncate_jsonl(path, resume_step)
            elif os.path.exists(path):
                os.remove(path)
            self.files[name] = open(path, "a")
        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                         purge_step=resume_step + 1 if resume_step else None)

    def write(self, name: str, step: int, scalars: dict) -> None:
        """Appends `{"step": step, **scalars}` to `<name>.jsonl` and each number to TensorBoard
        as `<group>/<key>`."""
        record = {"step": int(step), **scalars}
        self.files[name].write(json.dumps(record) + "\n")
        self.files[name].flush()
        for key, value in scalars.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                self.tensorboard.add_scalar(f"{TENSORBOARD_GROUP[name]}/{key}", value, step)
        self.tensorboard.flush()

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.tensorboard.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600
            else f"{seconds // 60}:{seconds % 60:02d}")


class Progress:
    """The progress line. On a terminal, one line redrawn in place at least every second: a bar,
    steps/s, images/s, the last loss, the time so far and the ETA. Elsewhere (CI, cluster logs)
    the same as a plain line every `every_seconds`. A daemon thread draws it on time whatever
    the loop is doing (compiling, a slow step, evaluating), so the loop only reports:

        progress.tick(step)          # after every step: no device sync, a few microseconds
        progress.update(step, loss)  # when it has fetched a loss
        progress.log(message)        # a line printed above the progress line
        progress.close()             # stops the thread

    Steps/s and the ETA come from the steps of the last `window_seconds` (the first tick starts
    the clock, so compilation is not counted)."""

    def __init__(self, total_steps: int, start_step: int, *, batch_size: int,
                 log: Callable[[str], None], interactive: bool | None = None,
                 every_seconds: float = 15.0, redraw_seconds: float = 0.5,
                 window_seconds: float = 30.0, stream=None,
                 clock: Callable[[], float] = time.monotonic, background: bool = True):
        self.total, self.batch_size = total_steps, batch_size
        self._log = log
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.every, self.redraw, self.window, self.clock = (every_seconds, redraw_seconds,
                                                            window_seconds, clock)
        self.step, self.loss = start_step, None
        self.t0 = self.last_print = clock()
        self.shown = False
        # (time, step), oldest first, spanning the window (or the last 10,000 steps)
        self._samples = collections.deque(maxlen=10_000)
        self._draw_lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._run, name="cnn_jax-progress", daemon=True)
            self._thread.start()

    def tick(self, step: int, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.step = step
        samples = self._samples
        samples.append((now, step))
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()  # keeps one sample at or before the window's start

    def update(self, step: int, loss: float, now: float | None = None) -> None:
        self.loss = loss
        if step != self.step:
            self.tick(step, now)
        if self.interactive:
            self.poll(now)

    def rate(self) -> float | None:
        """Steps per second over the last `window_seconds`; None before two ticks."""
        try:
            (t_first, first), (t_last, last) = self._samples[0], self._samples[-1]
        except IndexError:
            return None
        return (last - first) / (t_last - t_first) if t_last > t_first else None

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        step, rate = self.step, self.rate()
        speed = (f"{rate:.2f} steps/s, {rate * self.batch_size:.0f} img/s" if rate
                 else "- steps/s")
        eta = _duration((self.total - step) / rate) if rate else "?"
        loss = f" | loss {self.loss:.4f}" if self.loss is not None else ""
        return (f"step {step}/{self.total} | {speed}{loss} | {_duration(now - self.t0)} elapsed, "
                f"ETA {eta}")

    def poll(self, now: float | None = None) -> None:
        """Redraws the line (on a terminal) or prints it if `every_seconds` have passed."""
        now = self.clock() if now is None else now
        with self._draw_lock:
            if self._closed.is_set():
                return
            if self.interactive:
                width = 24
                filled = int(width * self.step / max(self.total, 1))
                self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                                  f"{self.step / max(self.total, 1):4.0%} {self.line(now)}\x1b[K")
                self.stream.flush()
                self.shown = True
            elif now - self.last_print >= self.every:
                self.last_print = now
                self._log(self.line(now))

    def _run(self) -> None:
        period = self.redraw if self.interactive else min(self.every, 1.0)
        while not self._closed.wait(period):
            self.poll()

    def log(self, message: str) -> None:
        with self._draw_lock:
            if self.shown:
                self.stream.write("\r\x1b[K")
                self.shown = False
            self._log(message)

    def close(self) -> None:
        """Stops the thread and clears the line from the terminal."""
        with self._draw_lock:
            self._closed.set()
            if self.shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self.shown = False
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def repair_jsonl(path: str) -> int:
    """Cuts `path` after its last complete record (a line that ends in a newline and parses), as
    a crash or a full disk in the middle of a write can leave it torn. Returns the bytes cut."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        data = f.read()
    end = 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n") or (line.strip() and not isinstance(json.loads(line),
                                                                             dict)):
                break
        except ValueError:
            break
        end += len(line)
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return len(data) - end
