"""What the image-folder loader keeps between runs, in one cache directory.

- A record of the files that decoded fully, keyed by path, size and modification time: a run
  resumed (or the second split loaded) decodes only the files it has not checked yet.
- Decoded, resized images of a split as one `.npy` array, keyed by the files (path, size,
  modification time) and the decoding settings (size, channels, ...): a changed, added or
  removed file, or another setting, gives another key, and the stale array is deleted.

The directory is `cache_dir` when given, else `$CNN_JAX_CACHE_DIR`, else
`$XDG_CACHE_HOME/cnn_jax`, else `~/.cache/cnn_jax`; never the image folder itself, which may be
read-only or shared. Writes go to a temporary file renamed when complete, so an interrupted
run never leaves a half-written record or array.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

VERSION = 1  # bump when the decoded pixels of the same file and settings change


def cache_root(cache_dir: str = "") -> Path:
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("CNN_JAX_CACHE_DIR"):
        return Path(os.environ["CNN_JAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnn_jax"


def file_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class VerifiedFiles:
    """The files under one root that decoded fully: {path: [size, mtime_ns]}, as JSON."""

    def __init__(self, root: Path, cache_dir: str = ""):
        self.path = cache_root(cache_dir) / "verified" / f"{_digest(str(root.resolve()))}.json"
        try:
            self.good = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: check everything again
            self.good = {}

    def is_good(self, key: tuple[str, int, int]) -> bool:
        return self.good.get(key[0]) == [key[1], key[2]]

    def add(self, keys) -> None:
        before = dict(self.good)
        self.good.update({path: [size, mtime] for path, size, mtime in keys})
        if self.good != before:
            try:
                _write_atomic(self.path, lambda f: f.write(json.dumps(self.good).encode()))
            except OSError:  # a read-only cache only costs the next run a re-check
                pass


def array_cache_path(root: Path, split: str, keys, settings: dict, cache_dir: str = "") -> Path:
    """The `.npy` file of a split's decoded images: its name holds hashes of the root, the
    split and settings, and of every file's (path, size, mtime)."""
    prefix = f"{_digest(str(root.resolve()))}-{split}-{_digest([VERSION, settings])}"
    return cache_root(cache_dir) / "arrays" / f"{prefix}-{_digest([list(k) for k in keys])}.npy"


def load_array(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None


def save_array(path: Path, images: np.ndarray) -> bool:
    """Writes `images` and deletes the stale arrays of the same root, split and settings;
    False where it could not be written (a full or read-only disk)."""
    prefix = path.name.rsplit("-", 1)[0] + "-"
    try:
        _write_atomic(path, lambda f: np.save(f, images))
        for old in path.parent.glob(prefix + "*.npy"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        return False
    return True
