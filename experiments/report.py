"""A run's report: plots and a Markdown summary, written into the run's workdir.

    python -m experiments.report runs/lenet5_digits

writes `report/`: loss.png and accuracy.png (train and test per epoch, with the train loss
per logged step), learning_rate.png, confusion_matrix.png, and summary.md (final and best
metrics, per-class precision/recall/F1, the config, wall time and hardware).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(epochs: list[dict], steps: list[dict], key: str, ylabel: str, path: str) -> str:
    """Train and test `key` ('loss' or 'accuracy') per epoch, over the logged train steps."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    if steps:
        ax.plot([s["step"] for s in steps], [s[key] for s in steps], color="0.75", lw=1,
                label=f"train {key} (logged steps)")
    for split, style in (("train", "o-"), ("test", "s-")):
        if epochs and f"{split}_{key}" in epochs[0]:
            ax.plot([e["step"] for e in epochs], [e[f"{split}_{key}"] for e in epochs], style,
                    label=f"{split} {key} (epoch)")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if key == "loss" and all(s[key] > 0 for s in steps):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_learning_rate(steps: list[dict], path: str) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 3))
    ax.plot([s["step"] for s in steps], [s["learning_rate"] for s in steps])
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: str) -> str:
    matrix = np.asarray(confusion)
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * n, 1 + 0.5 * n))
    ax.imshow(matrix, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, matrix[i, j], ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test)")
    return _save(fig, path)


def summary_markdown(workdir: str, config: dict, epochs: list[dict], final: dict,
                     environment: dict) -> str:
    best_key = config["checkpoint"]["best_metric"] or "test_accuracy"
    higher = config["checkpoint"]["best_mode"] == "max"
    best = (max if higher else min)(epochs, key=lambda e: e[best_key])
    sessions = environment.get("sessions", [{}])
    lines = [
        f"# Run report: {os.path.basename(os.path.abspath(workdir))}", "",
        f"{config['model']['name']} on {config['dataset']['name']}, {config['num_epochs']} "
        f"epochs of batch {config['batch_size']}, {config['optimizer']['name']} at learning rate "
        f"{config['optimizer']['learning_rate']} ({config['schedule']['name']} schedule), "
        f"seed {config['seed']}.", "",
        "| metric | final | best |", "| --- | --- | --- |",
        f"| test accuracy | {final['accuracy']:.2%} | {max(e['test_accuracy'] for e in epochs):.2%} |",
        f"| test loss | {final['loss']:.4f} | {min(e['test_loss'] for e in epochs):.4f} |",
        f"| test macro-F1 | {final['macro_f1']:.4f} | {max(e['test_macro_f1'] for e in epochs):.4f} |",
        f"| train loss | {epochs[-1]['train_loss']:.4f} | {min(e['train_loss'] for e in epochs):.4f} |",
        "", f"Best {best_key}: {best[best_key]:.4g} at epoch {best['epoch']} (step {best['step']}).",
        "", "## Per class (test)", "", "| class | precision | recall | F1 |",
        "| --- | --- | --- | --- |",
    ]
    for name, p, r, f1 in zip(final["class_names"], final["per_class_precision"],
                              final["per_class_recall"], final["per_class_f1"]):
        lines.append(f"| {name} | {p:.4f} | {r:.4f} | {f1:.4f} |")
    train_seconds = sum(e["epoch_seconds"] for e in epochs)
    lines += [
        "", "## Time and hardware", "",
        f"- {train_seconds:.1f} s of training and evaluation over {len(epochs)} epochs, in "
        f"{len(sessions)} session(s) (a run resumed from a checkpoint has more than one)",
        f"- devices: {sessions[-1].get('device_kind')} x {len(sessions[-1].get('devices', []))}, "
        f"{sessions[-1].get('process_count')} process(es), host {sessions[-1].get('host')}",
        f"- Python {sessions[-1].get('python')}; "
        + ", ".join(f"{k} {v}" for k, v in sessions[-1].get("packages", {}).items()),
        "", "## Config", "", "```json", json.dumps(config, indent=2), "```", "",
        "Plots: loss.png, accuracy.png, learning_rate.png, confusion_matrix.png.",
    ]
    return "\n".join(lines) + "\n"


def write_report(workdir: str) -> list[str]:
    """Writes the report into `workdir/report/`; returns the files written."""
    needed = [os.path.join(workdir, f) for f in ("config.json", "metrics.jsonl")]
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{workdir} is not a finished or running cnn_jax run: missing "
                                f"{', '.join(missing)}.")
    config = read_json(needed[0])
    epochs = read_jsonl(needed[1])
    steps = read_jsonl(os.path.join(workdir, "steps.jsonl"))
    if not epochs:
        raise ValueError(f"{workdir} has no finished epoch yet: nothing to report.")
    final_path = os.path.join(workdir, "final_metrics.json")
    out = os.path.join(workdir, "report")
    os.makedirs(out, exist_ok=True)
    written = [plot_curves(epochs, steps, "loss", "cross-entropy", os.path.join(out, "loss.png")),
               plot_curves(epochs, steps, "accuracy", "accuracy",
                           os.path.join(out, "accuracy.png"))]
    if steps:
        written.append(plot_learning_rate(steps, os.path.join(out, "learning_rate.png")))
    if os.path.exists(final_path):
        final = read_json(final_path)
        written.append(plot_confusion(final["confusion_matrix"], final["class_names"],
                                      os.path.join(out, "confusion_matrix.png")))
        env_path = os.path.join(workdir, "environment.json")
        environment = read_json(env_path) if os.path.exists(env_path) else {}
        path = os.path.join(out, "summary.md")
        with open(path, "w") as f:
            f.write(summary_markdown(workdir, config, epochs, final, environment))
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="a run's workdir (as given to experiments.train)")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.workdir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(written))
    return 0


if __name__ == "__main__":
    from cnn_jax.errors import run_main
    sys.exit(run_main(main))
