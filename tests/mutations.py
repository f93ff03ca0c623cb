"""Deliberate bugs the test suite must catch: each mutation is applied to a scratch copy of the
repository, the tests named for it run there, and the report says which of them fail (catch
it). Run by hand, not by pytest or CI (the name does not start with test_):

    python tests/mutations.py                  # every mutation
    python tests/mutations.py --only vgg_no_bn_indices,mixup_ignores_alpha
    python tests/mutations.py --baseline       # also run each mutation's tests unmutated

A mutation no test catches is printed as NOT CAUGHT and the exit status is 1. The tests run
with the current interpreter and need what they need (torch and torchvision for the
torchvision ones). Expect minutes per mutation on a small machine: only the tests named
(`-k` selections) run, not whole files.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Mutation(NamedTuple):
    name: str
    file: str          # relative to the repository root
    old: str           # must occur exactly once in the file
    new: str
    tests: tuple       # pytest arguments (files, -k selections)


MUTATIONS = [
    Mutation("mixup_ignores_alpha", "cnn_jax/data/transforms.py",
             "k_lam, k_perm = jax.random.split(key)\n        lam = jax.random.beta(k_lam, alpha, alpha)",
             "k_lam, k_perm = jax.random.split(key)\n        lam = jax.random.beta(k_lam, 1.0, 1.0)",
             ("tests/test_transforms.py", "-k", "mix")),
    Mutation("cutmix_ignores_alpha", "cnn_jax/data/transforms.py",
             "k_lam, k_perm, k_y, k_x = jax.random.split(key, 4)\n        lam = jax.random.beta(k_lam, alpha, alpha)",
             "k_lam, k_perm, k_y, k_x = jax.random.split(key, 4)\n        lam = jax.random.beta(k_lam, 1.0, 1.0)",
             ("tests/test_transforms.py", "-k", "mix")),
    Mutation("cutmix_labels_by_lambda_not_area", "cnn_jax/data/transforms.py",
             "kept = 1 - (y1 - y0) * (x1 - x0) / (h * w)", "kept = lam",
             ("tests/test_transforms.py", "-k", "mix")),
    Mutation("vgg_no_bn_indices", "cnn_jax/transfer/torchvision.py",
             "i += 3 if bn else 2", "i += 3 if bn else 3",
             ("tests/test_torchvision.py", "-k", "vgg11 or vgg13", "tests/test_transfer.py", "-k",
              "torchvision or safetensors or vgg11 or vgg13")),
    Mutation("flatten_dense_not_permuted", "cnn_jax/transfer/torchvision.py",
             "return array.reshape(out, c, features // c).transpose(2, 1, 0).reshape(features, out)",
             "return array.T",
             ("tests/test_torchvision.py", "-k", "alexnet or vgg11_bn", "tests/test_transfer.py", "-k",
              "torchvision or safetensors")),
    Mutation("downsample_conv_and_norm_swapped", "cnn_jax/transfer/torchvision.py",
             "return f\"{prefix}.downsample.{0 if module[2] == 'conv' else 1}\"",
             "return f\"{prefix}.downsample.{1 if module[2] == 'conv' else 0}\"",
             ("tests/test_torchvision.py", "-k", "resnet18 or resnet50", "tests/test_transfer.py",
              "-k", "torchvision or safetensors")),
    Mutation("batch_norm_epsilon_1e-3", "cnn_jax/layers.py",
             "momentum=0.9, epsilon=1e-5", "momentum=0.9, epsilon=1e-3",
             ("tests/test_torchvision.py", "-k", "resnet18 or vgg11_bn", "tests/test_transfer.py",
              "-k", "torchvision or safetensors")),
    Mutation("bottleneck_last_norm_not_zero", "cnn_jax/models/resnet.py",
             "act=\"none\", norm_scale_init=last_scale,\n                      name=\"conv3\"",
             "act=\"none\",\n                      name=\"conv3\"",
             ("tests/test_models.py",)),
    Mutation("basic_block_last_norm_not_zero", "cnn_jax/models/resnet.py",
             "act=\"none\", norm_scale_init=last_scale,\n                      name=\"conv2\"",
             "act=\"none\",\n                      name=\"conv2\"",
             ("tests/test_models.py",)),
    Mutation("smoothgrad_noise_ignores_image_range", "cnn_jax/explain/attribution.py",
             "images + noise * noise_level * span", "images + noise * noise_level",
             ("tests/test_explain.py", "-k", "smoothgrad")),
    Mutation("smoothgrad_reuses_one_noise_draw", "cnn_jax/explain/attribution.py",
             "keys = jax.random.split(key, num_samples)\n    weights",
             "keys = jnp.stack([key] * num_samples)\n    weights",
             ("tests/test_explain.py", "-k", "smoothgrad")),
]


def copy_repo(dest: str) -> None:
    """The working tree as it is (tracked and untracked files git does not ignore)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = os.path.join(ROOT, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, f))


def run_tests(repo: str, tests: tuple) -> tuple[list[str], int, str]:
    """(failed test ids, pytest's exit status, the tail of its output)."""
    groups, current = [], []
    for arg in tests:  # "file -k expr file2 -k expr2": one pytest run per file
        if arg.endswith(".py") and current:
            groups.append(current)
            current = []
        current.append(arg)
    groups.append(current)
    failed, status, tail = [], 0, ""
    env = {**os.environ, "PYTHONPATH": repo, "JAX_PLATFORMS": "cpu"}
    env.pop("CI", None)  # a missing reference package skips here; the report shows it
    for group in groups:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p",
                                 "no:cacheprovider", *group], cwd=repo, env=env,
                                capture_output=True, text=True)
        failed += re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.M)
        status = max(status, result.returncode)
        tail += result.stdout.strip().splitlines()[-1] + "\n" if result.stdout.strip() else ""
    return failed, status, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated mutation names")
    parser.add_argument("--baseline", action="store_true",
                        help="first check each mutation's tests pass on the unmutated copy")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s) {sorted(unknown)}; valid: "
                     f"{', '.join(m.name for m in MUTATIONS)}")
    survivors, lines = [], ["| mutation | file | caught by | time |", "| --- | --- | --- | ---: |"]
    with tempfile.TemporaryDirectory(prefix="cnn_jax_mutations_") as scratch:
        pristine = os.path.join(scratch, "pristine")
        copy_repo(pristine)
        for m in chosen:
            source = open(os.path.join(pristine, m.file)).read()
            if source.count(m.old) != 1:
                raise SystemExit(f"{m.name}: the text to mutate occurs {source.count(m.old)} "
                                 f"times in {m.file} (must be once): update MUTATIONS")
            repo = os.path.join(scratch, m.name)
            shutil.copytree(pristine, repo)
            if args.baseline:
                failed, status, tail = run_tests(repo, m.tests)
                if status != 0:
                    raise SystemExit(f"{m.name}: its tests fail without the mutation: {failed} "
                                     f"{tail}")
            with open(os.path.join(repo, m.file), "w") as f:
                f.write(source.replace(m.old, m.new))
            start = time.perf_counter()
            failed, status, tail = run_tests(repo, m.tests)
            seconds = time.perf_counter() - start
            caught = ", ".join(f"`{t}`" for t in failed) if failed else "**NOT CAUGHT**"
            if not failed:
                survivors.append(m.name)
            lines.append(f"| {m.name} | {m.file} | {caught} | {seconds:.0f} s |")
            print(f"{m.name}: {'caught by ' + str(len(failed)) + ' test(s)' if failed else 'NOT CAUGHT'}"
                  f" ({seconds:.0f} s; {tail.strip()})", flush=True)
            shutil.rmtree(repo)
    print("\n".join(lines))
    if survivors:
        print(f"\nNot caught: {', '.join(survivors)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
