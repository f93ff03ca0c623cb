"""A port for a `jax.distributed` coordinator on this machine, for tests that start several
processes.

A port found free can be taken by another process before the coordinator binds it; the
coordinator then fails with "Failed to add port to server". `with_free_port` runs the
processes again on a new port when that happens.
"""

import socket

COLLISION = "Failed to add port to server"


def free_port() -> int:
    """A port free on every interface, as the coordinator binds it ([::]:PORT)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::", 0))
            return s.getsockname()[1]
    except OSError:  # no IPv6
        with socket.socket() as s:
            s.bind(("", 0))
            return s.getsockname()[1]


def with_free_port(run, attempts: int = 3):
    """`run("127.0.0.1:PORT")` -> (result, stderr text), run again on a new port while the
    coordinator could not bind its port; returns the last result."""
    for _ in range(attempts):
        result, stderr = run(f"127.0.0.1:{free_port()}")
        if COLLISION not in stderr:
            break
    return result
