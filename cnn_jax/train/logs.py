"""What a run writes as it goes: scalars to JSON lines and TensorBoard event files, and a
progress display.

    writer = MetricWriter(workdir, resume_step=0)
    writer.write("steps", step, {"loss": 0.3, "learning_rate": 0.1})  # steps.jsonl, train/loss
    writer.write("metrics", step, {"epoch": 1, "test_accuracy": 0.9})  # metrics.jsonl, epoch/...

A resumed run first drops the records after the step it resumes from, so the files read as one
uninterrupted run (TensorBoard is told the same with `purge_step`).
"""

from __future__ import annotations

import json
import os
import sys
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
    """On a terminal, one line redrawn in place: a bar, steps/s, the loss and the ETA. Elsewhere
    (CI, cluster logs) the same as a plain line every `every_seconds`. `log(message)` prints a
    message above it."""

    def __init__(self, total_steps: int, start_step: int, *, batch_size: int,
                 log: Callable[[str], None], interactive: bool | None = None,
                 every_seconds: float = 15.0):
        self.total, self.start, self.batch_size = total_steps, start_step, batch_size
        self._log = log
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.every = every_seconds
        self.t0 = self.last_print = time.perf_counter()
        self.shown = False

    def update(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if not self.interactive and now - self.last_print < self.every:
            return
        self.last_print = now
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = _duration((self.total - step) / rate) if rate > 0 else "?"
        text = (f"step {step}/{self.total} | {rate:.2f} steps/s, {rate * self.batch_size:.0f} img/s"
                f" | loss {loss:.4f} | ETA {eta}")
        if self.interactive:
            width = 24
            filled = int(width * step / self.total)
            sys.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {step / self.total:4.0%} "
                             f"{text}\x1b[K")
            sys.stdout.flush()
            self.shown = True
        else:
            self._log(text)

    def log(self, message: str) -> None:
        if self.shown:
            sys.stdout.write("\r\x1b[K")
            self.shown = False
        self._log(message)


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
