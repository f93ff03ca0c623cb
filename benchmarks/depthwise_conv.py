"""Depthwise convolution on XLA's CPU: `lax.conv_general_dilated(feature_group_count=C)` against
the same convolution written as a sum of shifted slices times per-channel weights
(`cnn_jax.ops.depthwise_conv_shifted`), forward and backward (flax issue 4207 reports the
grouped convolution slow on CPU).

    python benchmarks/depthwise_conv.py [--reps 5]

Prints the median seconds of each formulation for MobileNetV2- and ConvNeXt-like shapes.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax import ops

CASES = [  # (name, N, H, W, C, kernel, stride)
    ("MobileNetV2 block, 3x3", 64, 32, 32, 144, 3, 1),
    ("MobileNetV2 block, 3x3 stride 2", 64, 32, 32, 144, 3, 2),
    ("ConvNeXt-T stage 1, 7x7", 32, 32, 32, 96, 7, 1),
    ("ConvNeXt-T stage 3, 7x7", 32, 8, 8, 384, 7, 1),
]


def grouped(x, w, stride, pad):
    return lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=x.shape[-1])


def shifted(x, w, stride, pad):
    return ops.depthwise_conv_shifted(x, w, (stride, stride), ((pad, pad), (pad, pad)))


def timed(fn, *args, reps):
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(f"| case | grouped conv fwd+bwd s | shifted slices fwd+bwd s | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, n, h, w, c, k, s in CASES:
        x = jax.random.normal(jax.random.key(0), (n, h, w, c))
        kernel = jax.random.normal(jax.random.key(1), (k, k, 1, c))
        results = []
        for conv in (grouped, shifted):
            def loss(x, kernel, conv=conv):
                return jnp.sum(conv(x, kernel, s, k // 2) ** 2)
            step = jax.jit(jax.grad(loss, argnums=(0, 1)),
                           compiler_options=ops.compiler_options())
            results.append(timed(step, x, kernel, reps=args.reps))
        print(f"| {name} {n}x{h}x{w}x{c} | {results[0]:.4f} | {results[1]:.4f} | "
              f"{results[0] / results[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
