"""The files that describe a run in its workdir, besides its metrics and checkpoints.

    config.json       the resolved config
    config.py         the same as a config file: rerun the run with
                      python -m experiments.train --config WORKDIR/config.py --workdir NEW_WORKDIR
    environment.json  seed, Python and package versions, devices, host, command line, start time,
                      and `git`: the commit of the cnn_jax checkout and whether it had
                      uncommitted changes (null when cnn_jax is not run from a git checkout)

A run started on a workdir that holds checkpoints resumes them only if its config is the same
as the one saved there, up to the keys in `MAY_DIFFER_ON_RESUME`.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from typing import Any

import jax

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
    a, b = _flatten(saved), _flatten(current)
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
