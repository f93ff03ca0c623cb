"""Start N processes of one experiment on this machine, as a multi-host run would (loopback
only): each process calls `jax.distributed.initialize` with 127.0.0.1 as coordinator, reads
its own shard of the data, and process 0 logs and writes the workdir.

    python -m experiments.launch_local --num_processes 2 --devices_per_process 4 -- \
        --config experiments/configs/lenet5_digits.py --workdir runs/two_hosts \
        --config.parallel=mesh

`--devices_per_process` gives each process that many fake CPU devices (XLA's
--xla_force_host_platform_device_count); 0 leaves the devices as they are.

SIGTERM or SIGINT (Ctrl-C) to the launcher is passed on to every process once: they save a
checkpoint at the same step and stop, as one process does (a second one stops them at once).
The launcher never leaves a process behind: if one fails, the others are stopped; when the
launcher ends for any reason they are stopped (SIGTERM, then SIGKILL after --grace seconds),
and on Linux even a SIGKILL of the launcher sends them SIGTERM.
"""

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1


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


def _stop_with_parent(parent: int):
    """For the child, before it runs: SIGTERM when the launcher dies (Linux; elsewhere a no-op)."""
    def preexec():
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)
    return preexec


def stop(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM to each process still running, SIGKILL to those still running `grace` s later."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=0)
    parser.add_argument("--grace", type=float, default=60.0,
                        help="seconds the processes get to save and stop before SIGKILL")
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after --: the arguments of python -m experiments.train")
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if args.num_processes < 1:
        parser.error("--num_processes must be >= 1")
    env = dict(os.environ)
    if args.devices_per_process:
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                            f"{args.devices_per_process}").strip()
    address = f"127.0.0.1:{free_port()}"
    procs, received = [], []

    def forward(signum, frame):  # each signal once to each process; none reaches them directly
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(args.num_processes):  # own sessions: a terminal's Ctrl-C reaches us alone
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "experiments.train", *train_args,
                 f"--config.distributed.coordinator_address={address}",
                 f"--config.distributed.num_processes={args.num_processes}",
                 f"--config.distributed.process_id={i}"], env=env, start_new_session=True,
                preexec_fn=_stop_with_parent(os.getpid())))
            if received:  # a signal came while starting them
                procs[-1].send_signal(received[0])
        print(f"started {args.num_processes} processes (coordinator {address}): "
              f"{[p.pid for p in procs]}", flush=True)
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break  # one failed: the others would wait for it forever
            time.sleep(0.2)
    finally:
        stop(procs, args.grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [p.returncode for p in procs]
    if any(codes):
        print(f"process exit codes: {codes}", file=sys.stderr)
    return max((abs(c) for c in codes), default=0)


if __name__ == "__main__":
    from cnn_jax.errors import run_main
    sys.exit(run_main(main))
