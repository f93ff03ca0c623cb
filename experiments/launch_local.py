"""Start N processes of one experiment on this machine, as a multi-host run would (loopback
only): each process calls `jax.distributed.initialize` with 127.0.0.1 as coordinator, reads
its own shard of the data, and process 0 logs and writes the workdir.

    python -m experiments.launch_local --num_processes 2 --devices_per_process 4 -- \
        --config experiments/configs/lenet5_digits.py --workdir runs/two_hosts \
        --config.parallel=mesh

`--devices_per_process` gives each process that many fake CPU devices (XLA's
--xla_force_host_platform_device_count); 0 leaves the devices as they are. If one process
fails or this launcher is interrupted, every process is stopped.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=0)
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
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *train_args,
         f"--config.distributed.coordinator_address={address}",
         f"--config.distributed.num_processes={args.num_processes}",
         f"--config.distributed.process_id={i}"], env=env) for i in range(args.num_processes)]
    print(f"started {args.num_processes} processes (coordinator {address}): "
          f"{[p.pid for p in procs]}", flush=True)
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    if any(codes):
        print(f"process exit codes: {codes}", file=sys.stderr)
    return max((abs(c) for c in codes), default=0)


if __name__ == "__main__":
    from cnn_jax.errors import run_main
    sys.exit(run_main(main))
