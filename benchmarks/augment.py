"""Throughput of the on-device augmentations (jitted, on the CPU) and the scratch memory XLA
plans for a large batch: `trivial_augment`/`rand_augment` compute every op for every image and
keep the drawn one, so they cost more than a crop and a flip.

    python benchmarks/augment.py
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax.data.transforms import make_preprocess  # noqa: E402

SPECS = ["random_crop(padding=4)|hflip", "trivial_augment", "rand_augment(num_ops=2, magnitude=9)"]
N, SIZE, REPS = 128, 32, 20


def main():
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8))
    batch = {"image": x, "label": jnp.zeros(N, jnp.int32)}
    for spec in SPECS:
        fn = jax.jit(make_preprocess(spec, num_classes=10))
        start = time.perf_counter()
        jax.block_until_ready(fn(jax.random.key(0), batch))
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(REPS):
            out = fn(jax.random.key(i + 1), batch)
        jax.block_until_ready(out)
        rate = N * REPS / (time.perf_counter() - start)
        print(f"{spec:40s} compile {compile_s:5.1f} s  {rate:8.0f} images/s "
              f"({N}x{SIZE}x{SIZE}x3 uint8)")
    big = jax.ShapeDtypeStruct((256, 224, 224, 3), jnp.uint8)
    for spec in SPECS[1:]:
        fn = jax.jit(make_preprocess(spec, num_classes=10))
        memory = fn.lower(jax.random.key(0), {"image": big}).compile().memory_analysis()
        print(f"{spec:40s} 256x224x224x3: XLA scratch {memory.temp_size_in_bytes / 2**30:.2f} GiB"
              f" (the batch as float32: {256 * 224 * 224 * 3 * 4 / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
