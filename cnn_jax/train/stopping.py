"""How a training run stops on a signal, promptly.

The first SIGTERM or SIGINT only raises a flag: the loop reads it at the next step boundary,
saves a checkpoint and stops. A second one ends the process at once (the signal's default
action, even in the middle of a step), saving nothing: the last checkpoint stays good.

The loop hands steps to the device asynchronously; left alone it would run far ahead of the
device (up to the next point where it reads results) and a stop would wait for all the queued
steps. `StopSignals.dispatched` is called after each step is handed over and waits for the step
before it, so at most one step is queued behind the running one and a stop is honoured within
two steps, however long a step takes.

Tests make a run signal itself deterministically, when the outputs of given steps are ready:
    CNN_JAX_TEST_SIGNAL_AT_STEP=5            SIGTERM once step 5 is computed
    CNN_JAX_TEST_SIGNAL_AT_STEP=5,6:SIGKILL  and SIGKILL once step 6 is
The signal comes from a thread that waits on the device, while the loop goes on as it would.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

TEST_SIGNAL_ENV = "CNN_JAX_TEST_SIGNAL_AT_STEP"
AHEAD = 1  # steps queued behind the running one


def _test_signals(spec: str) -> dict[int, list[signal.Signals]]:
    """{step: [signals]} from CNN_JAX_TEST_SIGNAL_AT_STEP ("5", "5,6:SIGKILL")."""
    signals = {}
    for item in filter(None, spec.replace(" ", "").split(",")):
        step, _, name = item.partition(":")
        signals.setdefault(int(step), []).append(signal.Signals[name or "SIGTERM"])
    return signals


def _signal_when_ready(outputs, signum: signal.Signals) -> None:
    jax.block_until_ready(outputs)
    os.kill(os.getpid(), signum)


class StopSignals:
    """While active, SIGTERM and SIGINT set `received` (the signal's name) for the loop to read
    at the next step boundary; a second one ends the process at once."""

    def __init__(self):
        self.received, self._previous, self._in_flight = None, {}, []
        self._test = _test_signals(os.environ.get(TEST_SIGNAL_ENV, ""))

    def _handle(self, signum, frame):
        if self.received is not None:  # two signals were pending at once: the second one
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signal.Signals(signum).name
        for sig in self._previous:  # from now on a signal ends the process at once
            signal.signal(sig, signal.SIG_DFL)
        os.write(2, f"{self.received}: saving a checkpoint after this step, then stopping; send "
                    "it again to stop at once without saving.\n".encode())

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def dispatched(self, step: int, outputs) -> None:
        """Called once step `step` is handed to the device: waits until the step before it is
        computed (the device is busy with this one meanwhile, so throughput does not suffer)."""
        self._in_flight.append(outputs)
        if len(self._in_flight) > AHEAD:
            jax.block_until_ready(self._in_flight.pop(0))
        for signum in self._test.pop(step, ()):
            threading.Thread(target=_signal_when_ready, args=(outputs, signum), daemon=True).start()


def stop_requested(stop: StopSignals, step: int, every: int) -> str | None:
    """The signal to stop on after `step`, read once (one arriving later waits a step). With
    several processes they must stop at the same step: they agree every `every` steps,
    stopping if any of them was signalled."""
    if jax.process_count() == 1:
        return stop.received
    if step % every:
        return None
    received = stop.received
    anyone = multihost_utils.process_allgather(np.int32(received is not None))
    return received or ("a signal to another process" if np.any(anyone) else None)
