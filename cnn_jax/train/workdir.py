"""The files that describe a run in its workdir, besides its metrics and checkpoints.

    config.json       the resolved config
    config.py         the same as a config file: rerun the run with
                      python -m experiments.train --config WORKDIR/config.py --workdir NEW_WORKDIR
    environment.json  seed, Python and package versions, devices, host, command line, start time,
                      and `git`: the commit of the cnn_jax checkout and whether it had
                      uncommitted changes (null when cnn_jax is not run from a git checkout)

    run.lock          while a run is going: its host and PID (see `workdir_lock`)

A run started on a workdir that holds checkpoints resumes them only if its config is the same
as the one saved there, up to the keys in `MAY_DIFFER_ON_RESUME`.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import warnings
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from cnn_jax.config import ABSENT_MEANS
from cnn_jax.train.logs import repair_jsonl

# Keys that change how a run is carried out, not what it computes (dotted; "x.*": all of x).
MAY_DIFFER_ON_RESUME = ("resume", "input_threads", "log_every_steps", "checkpoint.every_steps",
                        "checkpoint.keep", "parallel", "distributed.*")
PACKAGES = ("cnn_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
            "tensorflow-datasets", "ml-collections", "numpy")

CONFIG_PY = '''"""The resolved config of the run in this directory, written by cnn_jax when it started.

Rerun it:
    python -m experiments.train --config {path} --workdir NEW_WORKDIR
"""

import json

import ml_collections

CONFIG = json.loads(r"""
{json}
""")


def _tuples(x):
    if isinstance(x, dict):
        return {{k: _tuples(v) for k, v in x.items()}}
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def get_config():
    return ml_collections.ConfigDict(_tuples(CONFIG))
'''


def write_json(path: str, obj: Any) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


def config_differences(saved: dict, current: dict) -> list[str]:
    """'key: saved -> current' for each key that differs, but those allowed to on resume."""
    a, b = {**ABSENT_MEANS, **_flatten(saved)}, {**ABSENT_MEANS, **_flatten(current)}
    allowed = lambda key: any(key == k or (k.endswith(".*") and key.startswith(k[:-1]))
                              for k in MAY_DIFFER_ON_RESUME)
    return [f"{key}: {a.get(key, '(absent)')!r} -> {b.get(key, '(absent)')!r}"
            for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key) and not allowed(key)]


def check_same_run(saved_config: dict, config: dict, workdir: str) -> None:
    differences = config_differences(saved_config, config)
    if differences:
        raise ValueError(
            f"{workdir} holds checkpoints of a different run; its config differs in:\n  "
            + "\n  ".join(differences) + "\nUse a new --workdir, or pass --config.resume=False to "
            "discard those checkpoints and start over here.")


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git_state(root: str = PROJECT_ROOT) -> dict | None:
    """{'commit': sha, 'dirty': bool} of the git checkout whose top level is `root` (dirty:
    tracked files differ from the commit; untracked ones do not count); None if `root` is not
    the top of a git checkout (cnn_jax installed as a package) or git is missing."""
    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    try:
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(root):
            return None  # a repository around an installed package is not cnn_jax's
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "process_count": jax.process_count(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "git": git_state(),
    }


def write_run_files(workdir: str, config: dict, start_step: int) -> None:
    """config.json, config.py and environment.json in `workdir`. environment.json keeps one
    entry per session of the run: the first, and each resumption (from `start_step`)."""
    write_json(os.path.join(workdir, "config.json"), config)
    path = os.path.join(workdir, "config.py")
    with open(path + ".tmp", "w") as f:
        f.write(CONFIG_PY.format(path=path, json=json.dumps(config, indent=2)))
    os.replace(path + ".tmp", path)
    env_path = os.path.join(workdir, "environment.json")
    sessions = []
    if start_step and os.path.exists(env_path):
        with open(env_path) as f:
            sessions = json.load(f)["sessions"]
    sessions.append({"start_step": start_step, **environment()})
    write_json(env_path, {"seed": config["seed"], "sessions": sessions})


def repair_logs(workdir: str, step: int, history: list[dict]) -> None:
    """Before a run resumed from the checkpoint of `step` appends to its logs: the checkpoint is
    trusted over them. A torn last record (a crash or a full disk in the middle of a write) is
    cut off, with a warning; metrics.jsonl is rewritten from the checkpoint's history if it lacks
    epochs the history holds. (MetricWriter then drops the records past `step`.)"""
    for name in ("steps.jsonl", "metrics.jsonl"):
        cut = repair_jsonl(os.path.join(workdir, name))
        if cut:
            warnings.warn(f"{os.path.join(workdir, name)} ended in a torn record ({cut} bytes, "
                          "from a crash or a full disk); cut back to its last complete record. "
                          f"Resuming from the checkpoint of step {step}.", stacklevel=2)
    path = os.path.join(workdir, "metrics.jsonl")
    logged = []
    if os.path.exists(path):
        with open(path) as f:
            logged = [json.loads(line)["step"] for line in f if line.strip()]
    if [s for s in logged if s <= step] != [r["step"] for r in history]:
        warnings.warn(f"{path} lacked epochs that the checkpoint of step {step} holds; rewrote "
                      "it from the checkpoint's history.", stacklevel=2)
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps({"step": r["step"], **{k: v for k, v in r.items()
                                                           if k != "step"}}) + "\n"
                         for r in history)
        os.replace(path + ".tmp", path)


LOCK_FILE = "run.lock"


class WorkdirLocked(RuntimeError):
    """Another running process holds the workdir."""


def _holder(fd: int) -> dict:
    """The host and PID a lock file names ({} if empty or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except ValueError:
        return {}


def _lock(workdir: str) -> int:
    """An open, exclusively flock-ed `workdir/run.lock` naming this host and PID. The kernel
    drops a flock when its process dies, however it dies: a lock file that can be locked was
    left by a process that has ended."""
    path = os.path.join(workdir, LOCK_FILE)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise WorkdirLocked(
                f"{workdir} is in use by another run: process {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')} (started {holder.get('started', '?')}) holds "
                f"{path}. Wait for it to end or stop it, or use another --workdir.") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it between our open and flock: lock the new one
    stale = _holder(fd)
    if stale:
        warnings.warn(f"Taking over the stale lock {path} of process {stale.get('pid')} on host "
                      f"{stale.get('host')}, which ended without releasing it.", stacklevel=3)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    return fd


@contextlib.contextmanager
def workdir_lock(workdir: str | None):
    """Holds `workdir/run.lock` while the block runs, so that two runs never share a workdir: a
    second one gets WorkdirLocked naming the holder. Process 0 holds it for a multi-process run
    (all processes fail together if it cannot). A lock left by a process that ended without
    releasing it (SIGKILL, a second Ctrl-C) is taken over with a warning. A workdir this made and
    left empty (the run failed before writing anything) is removed again."""
    if not workdir:
        yield
        return
    fd, error, created = None, None, False
    if jax.process_index() == 0:
        created = not os.path.isdir(workdir)
        os.makedirs(workdir, exist_ok=True)
        try:
            fd = _lock(workdir)
        except WorkdirLocked as e:
            error = e
    if jax.process_count() > 1:
        failed = multihost_utils.process_allgather(np.int32(error is not None))
        if np.any(failed) and error is None:
            error = WorkdirLocked(f"process 0 could not lock {workdir} (see its error)")
    if error:
        raise error
    try:
        yield
    finally:
        if fd is not None:
            path = os.path.join(workdir, LOCK_FILE)
            with contextlib.suppress(FileNotFoundError):  # remove it only if it is still ours
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    os.remove(path)
            os.close(fd)
            if created and not os.listdir(workdir):
                os.rmdir(workdir)


def locks_workdir(fn: Callable) -> Callable:
    """`fn(config, workdir, ...)` run holding `workdir_lock(workdir)`."""
    @functools.wraps(fn)
    def locked(config, workdir, *args, **kwargs):
        with workdir_lock(workdir):
            return fn(config, workdir, *args, **kwargs)
    return locked
