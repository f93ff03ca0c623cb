"""Training throughput of cnn_jax against the same architectures in PyTorch.

Run from the repository root:

    python benchmarks/train_step.py                       # all models, batch 128, 5 reps
    python benchmarks/train_step.py --models lenet5 --reps 9
    python benchmarks/train_step.py --smoke --out_dir /tmp/bench   # < 1 min; what the tests run

Per model (LeNet-5 on 32x32x1; ResNet-18 with the CIFAR stem and VGG-11 CIFAR on 32x32x3;
U-Net width 16 on 128x128x1 with per-pixel labels, batch 16, only when asked for:
`--models unet --out_dir benchmarks/results/unet`; MobileNetV2 and ConvNeXt-Tiny, CIFAR variants,
on 32x32x3, batch 64 and 32, also only when asked for: `--models mobilenet_v2_cifar,
convnext_tiny_cifar --out_dir benchmarks/results/modern`, against torchvision's own modules with
the same stems and strides), 10 classes: images/s of the whole train step (forward, backward and an SGD update, lr 0.01,
momentum 0.9) in cnn_jax (the training loop's own jitted step: `DataParallel("none").train_step`,
which compiles with `cnn_jax.ops.compiler_options()`) and in PyTorch
(benchmarks/torch_models.py: the same layers and parameter counts, train mode, on
`os.cpu_count()` threads). Each framework runs in its native layout: NHWC in JAX, NCHW in
PyTorch, on random images made once on the device. After a warm-up the two frameworks run
interleaved (rep 1 JAX, rep 1 PyTorch, rep 2 JAX, ...), so that a change in the machine's load
hits both; each rep is the same number of steps (about --seconds of the slower framework) and
the median rep counts. For cnn_jax also: the compile time (lower + compile), the peak memory
XLA plans for the step, and FLOP/s as a fraction of the best float32 matmul each framework
reaches on this machine. Writes train_step.md and train_step.json to --out_dir.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax  # noqa: E402
import jax  # noqa: E402
import optax  # noqa: E402

from cnn_jax import ops  # noqa: E402
from cnn_jax.models import get_model, input_shape, model_task  # noqa: E402
from cnn_jax.train.parallel import DataParallel  # noqa: E402
from cnn_jax.train.step import create_train_state, train_step  # noqa: E402

try:
    import torch

    from benchmarks import torch_models
except ImportError:  # PyTorch is optional: cnn_jax alone then
    torch = None

DEFAULT_MODELS = ("lenet5", "resnet18_cifar", "vgg11_cifar")
MODELS = (*DEFAULT_MODELS, "unet", "mobilenet_v2_cifar", "convnext_tiny_cifar")
OPTIONS = {"unet": {"width": 16}}  # both frameworks
SMOKE_OPTIONS = {"resnet18_cifar": {"width": 16}, "unet": {"width": 4}}  # keeps CI fast
SHAPES = {"unet": (128, 128, 1)}  # else the registry's input_shape
SMOKE_SHAPES = {"unet": (32, 32, 1)}
BATCH_SIZES = {"unet": 16, "mobilenet_v2_cifar": 64, "convnext_tiny_cifar": 32}  # else --batch_size's default
LEARNING_RATE, MOMENTUM, NUM_CLASSES = 0.01, 0.9, 10
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per framework")
    parser.add_argument("--batch_size", type=int, default=None,
                        help=f"default 128 ({', '.join(f'{k} {v}' for k, v in BATCH_SIZES.items())})")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per framework before the timed calibration")
    parser.add_argument("--seconds", type=float, default=2.0, help="rough length of one rep")
    parser.add_argument("--matmul_size", type=int, default=2048, help="n of the n x n peak matmul")
    parser.add_argument("--smoke", action="store_true",
                        help="batch 8, 1 warm-up + 2 reps of 1 step, ResNet width 16: < 1 min")
    parser.add_argument("--no_torch", action="store_true", help="cnn_jax only")
    parser.add_argument("--out_dir", default=None,
                        help=f"default {RESULTS} ({RESULTS}/smoke with --smoke)")
    args = parser.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"unknown model(s) {unknown}. Valid choices: {', '.join(MODELS)}.")
    if args.smoke:
        args.batch_size, args.reps, args.warmup, args.matmul_size = 8, 2, 0, 512
    if args.reps < 1 or (args.batch_size is not None and args.batch_size < 1) or args.warmup < 0:
        parser.error("--reps and --batch_size must be positive, --warmup not negative.")
    if args.out_dir is None:
        args.out_dir = os.path.join(RESULTS, "smoke") if args.smoke else RESULTS
    return args


def machine_info(torch_device):
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    device = jax.devices()[0]
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
            "jax_device": f"{device.platform} ({device.device_kind})",
            "torch": torch.__version__ if torch_device else None, "torch_device": torch_device,
            "load_average_1min": os.getloadavg()[0],  # others' work skews the timings
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


# ---- matmul peaks -------------------------------------------------------------------------

def best_seconds(fn, tries):
    fn()  # warm-up (and compile)
    times = []
    for _ in range(tries):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def jax_matmul_flops(n, tries):
    a, b = jax.random.normal(jax.random.key(0), (2, n, n), jax.numpy.float32)
    # The better of XLA's default kernels and those `ops.compiler_options()` selects.
    seconds = [best_seconds(lambda: dot(a, b).block_until_ready(), tries)
               for dot in (jax.jit(jax.numpy.dot),
                           jax.jit(jax.numpy.dot, compiler_options=ops.compiler_options()))]
    return 2 * n**3 / min(seconds)


def torch_matmul_flops(n, tries, device):
    a, b = torch.randn(2, n, n, device=device)

    def mm():
        torch.mm(a, b)
        torch_sync(device)
    return 2 * n**3 / best_seconds(mm, tries)


def torch_sync(device):
    if device == "cuda":  # CUDA runs asynchronously; the CPU does not
        torch.cuda.synchronize()


# ---- the two train steps: each `run(n)` does n steps and returns once they are done -------

def label_shape(name, shape):
    """A class per image, or per pixel for a segmentation model."""
    return tuple(shape[:2]) if model_task(name) == "segmentation" else ()


def jax_setup(name, batch_size, options, shape):
    model = get_model(name, num_classes=NUM_CLASSES, **options)
    tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    state = create_train_state(model, tx, jax.random.key(0), shape)
    image_key, label_key = jax.random.split(jax.random.key(1))
    batch = {"image": jax.random.normal(image_key, (batch_size, *shape), jax.numpy.float32),
             "label": jax.random.randint(label_key, (batch_size, *label_shape(name, shape)), 0,
                                         NUM_CLASSES)}
    params = sum(x.size for x in jax.tree.leaves(state.params))

    start = time.perf_counter()
    compiled = DataParallel("none").train_step(train_step).lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    cost = compiled.cost_analysis()  # of the whole step: FLOPs per step, not per image
    memory = compiled.memory_analysis()
    info = {"params": params, "compile_s": compile_s,
            "flops_per_step": cost.get("flops") if cost else None, "memory_bytes": None}
    if memory is not None:
        # The donated state's outputs reuse its argument buffers (alias), so count them once.
        info["memory_bytes"] = {
            "argument": memory.argument_size_in_bytes, "output": memory.output_size_in_bytes,
            "alias": memory.alias_size_in_bytes, "temp": memory.temp_size_in_bytes,
            "peak": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                     - memory.alias_size_in_bytes + memory.temp_size_in_bytes)}

    def run(n):
        nonlocal state
        for _ in range(n):
            state, _ = compiled(state, batch)
        jax.block_until_ready(state)
    return run, info


def torch_setup(name, batch_size, options, device, shape):
    torch.manual_seed(0)
    model = torch_models.build(name, num_classes=NUM_CLASSES, **options).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    h, w, c = shape
    images = torch.randn(batch_size, c, h, w, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch_size, *label_shape(name, shape)), device=device)
    params = sum(p.numel() for p in model.parameters())

    def run(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()
        torch_sync(device)
    return run, {"params": params}


def seconds(run, n):
    start = time.perf_counter()
    run(n)
    return time.perf_counter() - start


def bench_model(name, args, torch_device):
    options = SMOKE_OPTIONS.get(name, {}) if args.smoke else OPTIONS.get(name, {})
    shape = (SMOKE_SHAPES if args.smoke else SHAPES).get(name, input_shape(name))
    batch_size = args.batch_size or BATCH_SIZES.get(name, 128)
    runs = {}
    runs["jax"], jax_info = jax_setup(name, batch_size, options, shape)
    result = {"options": options, "input_shape": list(shape), "jax": jax_info, "torch": None}
    if torch_device:
        runs["torch"], result["torch"] = torch_setup(name, batch_size, options, torch_device,
                                                     shape)
        if result["torch"]["params"] != result["jax"]["params"]:
            raise RuntimeError(f"{name}: PyTorch has {result['torch']['params']:,} parameters, "
                               f"cnn_jax {result['jax']['params']:,}; the models differ.")
    # Warm-up, then (outside smoke mode) time 1, 2, 4, ... steps until that takes half a rep:
    # more warm-up (PyTorch's CPU kernels take a while to settle) and a step time to size the
    # reps with, the slower framework's.
    step_s = {}
    for fw, run in runs.items():
        run(args.warmup)
        n, t = 1, seconds(run, 1)
        while not args.smoke and t < args.seconds / 2:
            n *= 2
            t = seconds(run, n)
        step_s[fw] = t / n
    steps = 1 if args.smoke else max(1, round(args.seconds / max(step_s.values())))
    times = {fw: [] for fw in runs}
    for _ in range(args.reps):
        for fw, run in runs.items():  # interleaved: JAX, PyTorch, JAX, ...
            times[fw].append(seconds(run, steps))
    result.update(params=result["jax"]["params"], batch_size=batch_size,
                  steps_per_rep=steps, reps=args.reps)
    for fw in runs:
        rates = [steps * batch_size / t for t in times[fw]]
        result[fw].update(rep_images_per_s=rates, images_per_s=statistics.median(rates))
    return result


def add_flop_fractions(result, peaks):
    """FLOP/s of each framework, with cnn_jax's FLOP count for both, over its matmul peak."""
    flops = result["jax"]["flops_per_step"]
    for fw in ("jax", "torch"):
        if result[fw] is not None and flops:
            achieved = flops * result[fw]["images_per_s"] / result["batch_size"]
            result[fw]["flops_per_s"] = achieved
            result[fw]["fraction_of_matmul_peak"] = achieved / peaks[fw]


# ---- output --------------------------------------------------------------------------------

def si(x):
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x:.0f}"


def markdown(report):
    m, s, peaks = report["machine"], report["settings"], report["matmul_peak_flops"]
    n = s["matmul_size"]
    has_torch = m["torch_device"] is not None
    batches = sorted({r["batch_size"] for r in report["models"].values()})
    lines = ["# Train step: cnn_jax vs PyTorch", "",
             f"{m['cpu']}, {m['cpu_cores']} cores; JAX {m['jax']} on {m['jax_device']}, "
             + (f"PyTorch {m['torch']} on {m['torch_device']}" if has_torch else "no PyTorch")
             + f"; {m['date']}; load average {m['load_average_1min']:.2f} at the start.", "",
             f"Batch {', '.join(map(str, batches))}, {s['reps']} reps, SGD lr {LEARNING_RATE} momentum "
             f"{MOMENTUM}. Matmul peak (float32 {n}x{n}, best of {s['matmul_tries']}): JAX "
             f"{si(peaks['jax'])}FLOP/s" + (f", PyTorch {si(peaks['torch'])}FLOP/s." if has_torch
                                          else "."), ""]
    if s["smoke"]:
        lines += ["**Smoke run** (tiny batch, ResNet width 16): the numbers mean nothing.", ""]
    lines += ["| model | params | cnn_jax img/s | PyTorch img/s | ratio | compile s | peak MiB "
              "| FLOP/step | % of matmul peak (jax) | % of peak (torch) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in report["models"].items():
        j, t = r["jax"], r["torch"]
        mem = j["memory_bytes"]
        cells = [name, f"{r['params']:,}", f"{j['images_per_s']:.1f}",
                 f"{t['images_per_s']:.1f}" if t else "n/a",
                 f"{j['images_per_s'] / t['images_per_s']:.2f}" if t else "n/a",
                 f"{j['compile_s']:.1f}", f"{mem['peak'] / 2**20:.0f}" if mem else "n/a",
                 si(j["flops_per_step"]) if j["flops_per_step"] else "n/a",
                 f"{100 * j['fraction_of_matmul_peak']:.1f}" if "flops_per_s" in j else "n/a",
                 f"{100 * t['fraction_of_matmul_peak']:.1f}" if t and "flops_per_s" in t else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *[f"- {note}" for note in report["notes"]]]
    for name, r in report["models"].items():
        if r["options"] or name in SHAPES:
            lines.append(f"- {name}: options {r['options']}, input {tuple(r['input_shape'])}, "
                         f"batch {r['batch_size']}, {NUM_CLASSES} classes"
                         + (" per pixel." if model_task(name) == "segmentation" else "."))
    return "\n".join(lines) + "\n"


def notes(args, torch_device, peak_rss_mib):
    out = [f"img/s: the median of {args.reps} reps; a rep is a fixed number of train steps per "
           "model (forward, backward, optimizer update); the frameworks ran interleaved. "
           "ratio = cnn_jax / PyTorch (above 1: cnn_jax is faster). JAX runs NHWC, PyTorch NCHW.",
           "compile s: the jitted step's `.lower(...).compile()`, wall time.",
           "peak MiB: what XLA plans for the compiled step (`memory_analysis()`: arguments + "
           "outputs - donated buffers reused as outputs + temporaries). The process's peak RSS "
           f"over the whole run (every model and framework above) was {peak_rss_mib:.0f} MiB.",
           "FLOP/step: XLA's `cost_analysis()` of the compiled step, per step (the whole batch). "
           "XLA counts only the kernel taps that fall on the image, not on padding zeros, so for "
           "padded 3x3 convolutions on small maps it is below a dense hand count "
           "(2 x 3 x forward MACs). The % columns use this count for both frameworks."]
    if torch_device is None:
        out.append("PyTorch columns empty: " + ("--no_torch." if args.no_torch
                                                 else "PyTorch is not installed."))
    return out


def main():
    args = parse_args()
    torch_device = None
    if torch is not None and not args.no_torch:
        torch_device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.set_num_threads(os.cpu_count())
    machine = machine_info(torch_device)
    print(f"{machine['cpu']}, {machine['cpu_cores']} cores, jax {machine['jax']} on "
          f"{machine['jax_device']}, torch {machine['torch']} on {torch_device}", flush=True)

    tries = 2 if args.smoke else 5
    peaks = {"jax": jax_matmul_flops(args.matmul_size, tries)}
    if torch_device:
        peaks["torch"] = torch_matmul_flops(args.matmul_size, tries, torch_device)
    print("matmul peak: " + ", ".join(f"{fw} {si(f)}FLOP/s" for fw, f in peaks.items()), flush=True)

    results = {}
    for name in args.models:
        r = results[name] = bench_model(name, args, torch_device)
        add_flop_fractions(r, peaks)
        print(f"  {name}: cnn_jax {r['jax']['images_per_s']:.1f} img/s"
              + (f", PyTorch {r['torch']['images_per_s']:.1f} img/s" if r["torch"] else "")
              + f" ({r['steps_per_rep']} steps/rep, compile {r['jax']['compile_s']:.1f} s)",
              flush=True)

    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    settings = {"batch_size": args.batch_size, "reps": args.reps, "warmup": args.warmup,
                "seconds": args.seconds, "matmul_size": args.matmul_size, "matmul_tries": tries,
                "smoke": args.smoke, "learning_rate": LEARNING_RATE, "momentum": MOMENTUM}
    report = {"machine": machine, "settings": settings, "matmul_peak_flops": peaks,
              "process_peak_rss_mib": peak_rss_mib, "models": results,
              "notes": notes(args, torch_device, peak_rss_mib)}
    text = markdown(report)
    print("\n" + text)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "train_step.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out_dir, "train_step.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out_dir}/train_step.{{md,json}}")


if __name__ == "__main__":
    main()
