"""A hyperparameter sweep: one experiment config, several values of some of its keys, each
trial trained in its own workdir, then a comparison table and plot.

    python -m experiments.sweep --config experiments/configs/lenet5_digits.py \
        --workdir runs/sweep_lr_bs \
        --param optimizer.learning_rate=0.02,0.05 --param batch_size=16,32 \
        --config.num_epochs=5

Grid (the default): every combination of the listed values. Random: `--random N --seed S`
draws N trials; a `--param` is then a list to pick from or a range,
`key=uniform(a,b)` / `key=loguniform(a,b)` / `key=randint(a,b)` (b included).
Other `--config.<key>=<value>` arguments apply to every trial.

Trials run one after the other in this process, in `WORKDIR/<trial>/`. Rerunning the same
command skips finished trials and resumes an interrupted one from its checkpoint. At the end:
`WORKDIR/sweep.md`, `WORKDIR/sweep.csv` and `WORKDIR/sweep.png` (the chosen metric against each
swept value, one line per value of the other swept keys).

Trials are ranked on the validation split (`--metric`, default `val_accuracy`, a key of
metrics.jsonl); `sweep.md` gives the test accuracy of the top-ranked trial only. Ranking on a
`test_*` metric is test-set leakage and is refused unless `--allow_test_leakage` is given.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import re
import sys

import numpy as np

from cnn_jax.config import get_value, load_config_file, parse_value, set_value

RANGE = re.compile(r"^(uniform|loguniform|randint)\(([^,]+),([^,]+)\)$")


def parse_param(spec: str, config) -> tuple[str, list | tuple]:
    """'key=v1,v2' -> (key, [values]); 'key=uniform(a,b)' -> (key, ('uniform', a, b))."""
    if "=" not in spec:
        raise ValueError(f"--param {spec!r}: expected key=value1,value2,...")
    key, values = spec.split("=", 1)
    current = get_value(config, key)
    match = RANGE.match(values.replace(" ", ""))
    if match:
        kind, low, high = match.groups()
        try:
            low, high = float(low), float(high)
        except ValueError:
            raise ValueError(f"--param {key}: {kind}(a,b) needs two numbers, got "
                             f"{values!r}.") from None
        if not low < high:
            raise ValueError(f"--param {key}: {kind}({low:g},{high:g}) needs a < b.")
        if kind == "loguniform" and low <= 0:
            raise ValueError(f"--param {key}: loguniform({low:g},{high:g}) needs 0 < a < b "
                             "(it draws the logarithm uniformly).")
        if kind == "randint" and (low != int(low) or high != int(high)):
            raise ValueError(f"--param {key}: randint({low:g},{high:g}) needs integers.")
        return key, (kind, low, high)
    try:
        return key, [parse_value(text, current) for text in values.split(",")]
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"--param {key}: {e} (config.{key} is a "
                         f"{type(current).__name__}).") from None


def trials(params: list[tuple[str, list | tuple]], random: int, seed: int) -> list[dict]:
    """The trials' values: the grid, or `random` draws (the same ones for the same seed)."""
    if not random:
        ranges = [k for k, v in params if isinstance(v, tuple)]
        if ranges:
            raise ValueError(f"Ranges ({', '.join(ranges)}) need --random N.")
        return [dict(zip([k for k, _ in params], combo))
                for combo in itertools.product(*[v for _, v in params])]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(random):
        trial = {}
        for key, values in params:
            if isinstance(values, list):
                trial[key] = values[rng.integers(len(values))]
            elif values[0] == "uniform":
                trial[key] = float(rng.uniform(values[1], values[2]))
            elif values[0] == "loguniform":
                trial[key] = float(math.exp(rng.uniform(math.log(values[1]), math.log(values[2]))))
            else:
                trial[key] = int(rng.integers(int(values[1]), int(values[2]) + 1))
        draws.append(trial)
    return draws


def trial_name(index: int, values: dict) -> str:
    text = "_".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else
                    f"{k.split('.')[-1]}={v}" for k, v in values.items())
    return f"{index:03d}_" + re.sub(r"[^\w.=+-]", "-", text)


def check_metric(metric: str, allow_test_leakage: bool) -> None:
    from cnn_jax.train.selection import EPOCH_METRICS
    if metric not in EPOCH_METRICS:
        raise ValueError(f"--metric {metric!r} is not an epoch metric; valid: "
                         f"{', '.join(EPOCH_METRICS)}.")
    if metric.startswith("test_") and not allow_test_leakage:
        raise ValueError(f"--metric {metric!r} ranks the trials on the test split (test-set "
                         f"leakage); rank on {metric.replace('test_', 'val_', 1)!r}, or pass "
                         "--allow_test_leakage if you mean it.")


def plot_lines(ax, rows: list[dict], key: str, others: list[str], metric: str) -> None:
    """`metric` against `key`, one line per combination of the `others`' values."""
    xs = [row[key] for row in rows]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    labels = sorted(set(map(str, xs)))
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in others), []).append(row)
    for values, group in sorted(groups.items(), key=lambda item: str(item[0])):
        group = sorted(group, key=lambda r: r[key] if numeric else str(r[key]))
        positions = [r[key] if numeric else labels.index(str(r[key])) for r in group]
        name = ", ".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else
                         f"{k.split('.')[-1]}={v}" for k, v in zip(others, values))
        ax.plot(positions, [r[metric] for r in group], "o-", label=name or None)
    if numeric and min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(labels)), labels)
    if others:
        ax.legend(fontsize=7)


def write_results(workdir: str, rows: list[dict], keys: list[str], metric: str,
                  higher_is_better: bool) -> list[str]:
    columns = ["trial", *keys, metric, "best_" + metric, "train_loss", "wall_seconds"]
    csv_path = os.path.join(workdir, "sweep.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")  # test: top trial only
        writer.writeheader()
        writer.writerows(rows)
    order = sorted(rows, key=lambda r: r[metric], reverse=higher_is_better)
    md = [f"# Sweep: {len(rows)} trials, sorted by {metric} (last epoch)", "",
          "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    def cell(column, value):
        if isinstance(value, float):
            return f"{value:.2%}" if column.endswith("accuracy") else f"{value:.4g}"
        return str(value)

    for row in order:
        md.append("| " + " | ".join(cell(c, row[c]) for c in columns) + " |")
    top = order[0]
    if top.get("test_accuracy") is not None:
        md += ["", f"Selected on {metric}: {top['trial']}; its test accuracy (last checkpoint): "
                   f"{top['test_accuracy']:.2%}. The other trials' test figures are not shown: "
                   "choosing among them by test accuracy would leak the test split."]
    md_path = os.path.join(workdir, "sweep.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        plot_lines(ax, rows, key, [k for k in keys if k != key], metric)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path = os.path.join(workdir, "sweep.png")
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return [md_path, csv_path, png_path]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", required=True, help="experiment config file")
    parser.add_argument("--workdir", required=True, help="the sweep's directory")
    parser.add_argument("--param", action="append", required=True,
                        help="key=v1,v2,... (or a range with --random); repeat per key")
    parser.add_argument("--random", type=int, default=0, help="draw N random trials")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    parser.add_argument("--metric", default="val_accuracy",
                        help="last-epoch metric to rank on (a key of metrics.jsonl: val_*)")
    parser.add_argument("--mode", choices=("max", "min"), default="max")
    parser.add_argument("--allow_test_leakage", action="store_true",
                        help="allow ranking on a test_* metric (test-set leakage)")
    args, rest = parser.parse_known_args(argv)
    from cnn_jax.train import train_and_evaluate  # after parsing: --help needs no JAX
    from cnn_jax.train.loop import Preempted

    try:
        base = load_config_file(args.config)
        for arg in rest:
            match = re.fullmatch(r"--config\.([\w.]+)=(.*)", arg)
            if not match:
                raise ValueError(f"Unexpected argument {arg!r}; expected --config.<key>=<value>.")
            set_value(base, match.group(1), match.group(2))
        params = [parse_param(p, base) for p in args.param]
        chosen = trials(params, args.random, args.seed)
        check_metric(args.metric, args.allow_test_leakage)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).strip(chr(39))}", file=sys.stderr)
        return 2
    keys = [k for k, _ in params]
    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    for i, values in enumerate(chosen):
        name = trial_name(i, values)
        trial_dir = os.path.join(args.workdir, name)
        final_path = os.path.join(trial_dir, "final_metrics.json")
        config = base.copy_and_resolve_references()
        for key, value in values.items():
            set_value(config, key, value)
        if os.path.exists(final_path):
            print(f"[{i + 1}/{len(chosen)}] {name}: finished before, skipped", flush=True)
        else:
            print(f"[{i + 1}/{len(chosen)}] {name}: training", flush=True)
            try:
                train_and_evaluate(config, trial_dir, log=lambda message, n=name: print(
                    f"  {n}: {message}", flush=True))
            except Preempted as e:  # a checkpoint was saved: rerunning the sweep resumes it
                print(f"{e} Rerun the same sweep command to resume trial {name} and go on.",
                      file=sys.stderr, flush=True)
                return 0
        with open(os.path.join(trial_dir, "metrics.jsonl")) as f:
            epochs = [json.loads(line) for line in f if line.strip()]
        if args.metric not in epochs[-1]:
            no_val = " (no validation split: config.validation_fraction=0?)" if (
                args.metric.startswith("val_")) else ""
            print(f"error: trial {name} has no metric {args.metric!r}{no_val}; valid: "
                  f"{', '.join(sorted(epochs[-1]))}", file=sys.stderr)
            return 2
        pick = max if args.mode == "max" else min
        with open(final_path) as f:
            test_accuracy = json.load(f).get("accuracy")
        rows.append({"trial": name, **values, args.metric: epochs[-1][args.metric],
                     "best_" + args.metric: pick(e[args.metric] for e in epochs
                                                 if args.metric in e),
                     "train_loss": epochs[-1]["train_loss"],
                     "wall_seconds": sum(e["epoch_seconds"] for e in epochs),
                     "test_accuracy": test_accuracy})
    for path in write_results(args.workdir, rows, keys, args.metric, args.mode == "max"):
        print(path)
    return 0


if __name__ == "__main__":
    from cnn_jax.errors import run_main
    sys.exit(run_main(main))
