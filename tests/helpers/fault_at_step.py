"""Runs `experiments.train` with a fault injected where the loop takes the batch of step STEP
(before training it), in process I only: a signal to itself (`SIGINT`, `SIGTERM`, or several,
`SIGINT,SIGINT`) or a crash (`exit:CODE`, `os._exit`). Deterministic: no timing involved.

    python tests/helpers/fault_at_step.py --at STEP --do SIGINT [--process I] -- TRAIN_ARGS
    python tests/helpers/fault_at_step.py --launch --at STEP --do exit:3 --process 1 \
        -- LAUNCH_LOCAL_ARGS -- TRAIN_ARGS

With `--launch` it runs `experiments.launch_local`, whose workers run this file instead of
`experiments.train` (the process index comes from `--config.distributed.process_id`).
In a test process: `inject(step, action)` patches `cnn_jax.data.train_iterator` the same way.
"""

import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fault(action: str) -> None:
    if action.startswith("exit:"):
        os._exit(int(action.split(":")[1]))
    for name in action.split(","):  # raise_signal: handled before it returns, one by one
        signal.raise_signal(getattr(signal, name))


def inject(at: int, action: str) -> None:
    """Patches `cnn_jax.data.train_iterator` (what the loop reads its batches with) to do
    `action` when the batch of step `at` is taken."""
    import cnn_jax.data as data_lib
    real = data_lib.train_iterator

    def train_iterator(*args, start_step=0, **kwargs):
        def batches():
            for step, batch in enumerate(real(*args, start_step=start_step, **kwargs),
                                         start_step + 1):
                if step == at:
                    _fault(action)
                yield batch
        return batches()

    data_lib.train_iterator = train_iterator


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--")
    own, rest = args[:split], args[split + 1:]
    at, action = int(own[own.index("--at") + 1]), own[own.index("--do") + 1]
    process = int(own[own.index("--process") + 1]) if "--process" in own else 0
    sys.path.insert(0, ROOT)
    if "--launch" in own:
        import subprocess

        from experiments import launch_local
        popen = subprocess.Popen

        def worker(cmd, *a, **kw):  # `python -m experiments.train ARGS` -> this file
            i = next(i for i in range(len(cmd) - 1) if cmd[i:i + 2] == ["-m", "experiments.train"])
            cmd = [*cmd[:i], os.path.abspath(__file__), "--at", str(at), "--do", action,
                   "--process", str(process), "--", *cmd[i + 2:]]
            return popen(cmd, *a, **kw)

        subprocess.Popen = worker
        sys.exit(launch_local.main(rest))
    me = next((int(a.split("=")[1]) for a in rest
               if a.startswith("--config.distributed.process_id=")), 0)
    if me == process:
        inject(at, action)
    from absl import app

    from experiments import train
    sys.argv = [sys.argv[0], *rest]
    train.check_override_keys(rest)
    app.run(train.main)


if __name__ == "__main__":
    main()
