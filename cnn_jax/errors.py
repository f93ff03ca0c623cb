"""The errors a user's input causes, and how every command shows them: one line, no traceback.

    if __name__ == "__main__":
        sys.exit(run_main(main))

`UserError` is the error for a config, a flag, a file or a dataset that is not right. It
is a ValueError, so code that catches ValueError from validation keeps working.

`run_main` runs `main()` and, when it raises an error the user caused, prints `error: <message>`
to stderr and exits with status 2. `--debug` on the command line (removed before `main` sees
it) or `CNN_JAX_DEBUG=1` shows the traceback instead.

Which errors are the user's (`is_user_error`):
  - `cnn_jax.errors.UserError`;
  - an OSError about a file (missing, a directory, not readable, disk full): it names the file;
  - a ValueError, LookupError (KeyError), FloatingPointError, OSError or an exception class
    of cnn_jax that our own code raised on purpose, with a `raise` statement in cnn_jax/ or
    experiments/: those are our validation messages, written for a person.
Anything else, including a ValueError raised inside JAX, NumPy or orbax, or one our code did
not raise on purpose (an unpacking error, a failed conversion), is a bug: its traceback is
printed as usual. Turning every ValueError into one line would hide exactly those.

`quiet_library_noise()` (called by `run_main`) silences library messages that tell the user
nothing (see its docstring).
"""

from __future__ import annotations

import linecache
import logging
import os
import sys
import warnings
from typing import Callable


class UserError(ValueError):
    """A message for the person who ran the command: what is wrong, where (the config key or
    the file), and what is valid."""


DEBUG_ENV = "CNN_JAX_DEBUG"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
_OURS = tuple(os.path.join(_ROOT, d) + os.sep for d in ("cnn_jax", "experiments"))
_RAISED = (ValueError, LookupError, FloatingPointError, OSError)

# Library log lines that say nothing a user can act on (substrings of the message).
NOISE = (
    "Given directory is read only",            # orbax, reading a run's checkpoints
    "read_only=True, setting save_interval_steps=0",  # the same
    "Requested `tracked_metric`",              # orbax, a checkpoint saved mid-epoch
    "OpenCV is not installed",                 # TFDS decodes with PIL instead: fine
    "Event loop is closed",                    # orbax's background threads at exit
    "has no dataset_info.json",                # TFDS, before we say the dataset is not prepared
)


def _raised_on_purpose(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc` is a `raise` statement in cnn_jax/ or experiments/."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    module = tb.tb_frame.f_globals.get("__name__", "")
    if not (filename.startswith(_OURS) or module.startswith(("cnn_jax.", "experiments."))):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise ")


def is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, UserError):
        return True
    if isinstance(exc, OSError) and exc.filename is not None:
        return True
    ours = type(exc).__module__.startswith(("cnn_jax", "experiments"))
    return (isinstance(exc, _RAISED) or ours) and _raised_on_purpose(exc)


def message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])  # str(KeyError) quotes its message
    if isinstance(exc, OSError) and exc.filename is not None and not exc.args[1:]:
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + str(record.exc_info[1])
        return not any(n in text for n in NOISE)


def quiet_library_noise() -> None:
    """Drops, once per process, the log lines of `NOISE`: orbax's read-only and
    `tracked_metric` warnings, TFDS's OpenCV hint, and "Event loop is closed" tracebacks that
    orbax's background threads log when a damaged checkpoint is abandoned. Also keeps the C++
    runtime (XLA, Gloo's "connected to ..." lines) to warnings and errors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    drop = _DropNoise()
    for name in ("", "absl", "asyncio", "orbax", "tensorflow_datasets", "jax"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(drop)
    warnings.filterwarnings("ignore", message=".*OpenCV is not installed.*")
    warnings.formatwarning = _format_warning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """`warning: <message>`: our warnings are written for the user; the source line is not."""
    return f"warning: {message}\n"


def run_main(main: Callable[[], int | None], argv: list[str] | None = None) -> int:
    """Runs `main()` (a command's main, reading `sys.argv`), returns its exit status; a user
    error ends in one line on stderr and status 2 (see the module docstring)."""
    argv = sys.argv if argv is None else argv
    if "--debug" in argv:  # through the environment: nested calls and worker processes see it
        os.environ[DEBUG_ENV] = "1"
    while "--debug" in argv:
        argv.remove("--debug")
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    quiet_library_noise()
    try:
        return main() or 0
    except KeyboardInterrupt:
        if debug:
            raise
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 (sorted below: a user's mistake or a bug)
        if debug or not is_user_error(exc):
            raise
        sys.stdout.flush()
        print(f"error: {message(exc)}", file=sys.stderr, flush=True)
        return 2
