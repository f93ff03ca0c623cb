"""XLA's transposed convolution on CPU against the phase-matmul form cnn_jax uses
(`cnn_jax.ops.conv_transpose`, jax issue 23783: XLA's CPU transposed convolution is slow).

Run from the repository root:

    python benchmarks/conv_transpose.py                  # U-Net's four up-convolutions + its step
    python benchmarks/conv_transpose.py --smoke --out_dir /tmp/bench

For each 2x2 stride-2 up-convolution of U-Net (width 16, batch 16, 128x128x1 input: the
shapes of benchmarks/train_step.py's U-Net), the time of the forward pass and of the forward
plus the gradients (input and kernel) of: `lax.conv_transpose` (what `flax.linen.ConvTranspose`
runs), `ops.conv_transpose(fast=False)` (the same, as a convolution of the zero-dilated input)
and `ops.conv_transpose(fast=True)` (one matmul per output phase, then depth-to-space). Then
U-Net's whole train step (SGD) with either up-sampling (`fast_upsample`). Best of --reps, after
one warm-up; jitted with `ops.compiler_options()`. Writes conv_transpose.{md,json} to --out_dir.
"""

import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

from cnn_jax import ops  # noqa: E402
from cnn_jax.models import get_model  # noqa: E402
from cnn_jax.train.step import create_train_state, train_step  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DNUMS = ("NHWC", "HWIO", "NHWC")
FORMS = {
    "lax.conv_transpose": lambda x, k: lax.conv_transpose(x, k[::-1, ::-1], (2, 2), "VALID",
                                                          dimension_numbers=DNUMS),
    "dilated conv (fast=False)": lambda x, k: ops.conv_transpose(x, k, (2, 2), fast=False),
    "phase matmul (fast=True)": lambda x, k: ops.conv_transpose(x, k, (2, 2), fast=True),
}


def best_seconds(fn, args, reps):
    jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def up_conv_cases(batch, size, width, depth=4):
    """(N, H, W, C_in, C_out) of U-Net's up-convolutions, deepest first."""
    return [(batch, size >> (level + 1), size >> (level + 1), width * 2**(level + 1),
             width * 2**level) for level in reversed(range(depth))]


def bench_op(shape, reps):
    n, h, w, c_in, c_out = shape
    x = jax.random.normal(jax.random.key(0), (n, h, w, c_in))
    k = jax.random.normal(jax.random.key(1), (2, 2, c_in, c_out)) * 0.05
    out = {}
    for name, form in FORMS.items():
        fwd = jax.jit(form, compiler_options=ops.compiler_options())
        grad = jax.jit(jax.grad(lambda x, k: jnp.sum(form(x, k) ** 2), (0, 1)),
                       compiler_options=ops.compiler_options())
        out[name] = {"forward_s": best_seconds(fwd, (x, k), reps),
                     "forward_backward_s": best_seconds(grad, (x, k), reps)}
    return out


def bench_unet_step(batch, size, width, reps):
    out = {}
    for fast in (False, True):
        model = get_model("unet", num_classes=10, width=width, fast_upsample=fast)
        state = create_train_state(model, optax.sgd(0.01, momentum=0.9), jax.random.key(0),
                                   (size, size, 1))
        batch_ = {"image": jax.random.normal(jax.random.key(1), (batch, size, size, 1)),
                  "label": jax.random.randint(jax.random.key(2), (batch, size, size), 0, 10)}
        step = jax.jit(train_step, compiler_options=ops.compiler_options())
        out["phase matmul (fast=True)" if fast else "dilated conv (fast=False)"] = {
            "train_step_s": best_seconds(lambda s, b: step(s, b)[0], (state, batch_), reps)}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="batch 2, 32x32, width 4, 1 rep")
    parser.add_argument("--out_dir", default=RESULTS)
    args = parser.parse_args()
    if args.smoke:
        args.reps, args.batch_size, args.size, args.width = 1, 2, 32, 4
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "cpu_cores": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
              "jax": jax.__version__, "settings": vars(args), "up_convolutions": {}}
    lines = ["# Transposed convolution on CPU: XLA's against the phase-matmul form", "",
             f"JAX {jax.__version__}, {os.cpu_count()} cores, load average "
             f"{os.getloadavg()[0]:.1f} at the start; {report['date']}. Best of {args.reps}. "
             "2x2 stride-2 up-convolutions of U-Net (width "
             f"{args.width}, batch {args.batch_size}, {args.size}x{args.size} input).", "",
             "| input (N, H, W, C) -> C_out | form | forward ms | forward + gradients ms |",
             "| --- | --- | ---: | ---: |"]
    for shape in up_conv_cases(args.batch_size, args.size, args.width):
        result = report["up_convolutions"][str(shape)] = bench_op(shape, args.reps)
        for name, r in result.items():
            lines.append(f"| {shape[:4]} -> {shape[4]} | {name} | {1e3 * r['forward_s']:.1f} | "
                         f"{1e3 * r['forward_backward_s']:.1f} |")
        print(lines[-3:], flush=True)
    report["unet_train_step"] = bench_unet_step(args.batch_size, args.size, args.width, args.reps)
    lines += ["", "| U-Net train step (SGD, all of it) | seconds |", "| --- | ---: |"]
    lines += [f"| {name} | {r['train_step_s']:.3f} |"
              for name, r in report["unet_train_step"].items()]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "conv_transpose.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out_dir, "conv_transpose.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out_dir}/conv_transpose.{{md,json}}")


if __name__ == "__main__":
    main()
