"""A run's report: plots and a Markdown summary, written into the run's workdir.

    python -m experiments.report runs/lenet5_digits

writes `report/`: loss.png and accuracy.png (train and validation per epoch, test where it was
evaluated, over the train loss per logged step; accuracy in %), learning_rate.png,
confusion_matrix.png (test, last checkpoint), and summary.md (last and best validation
metrics, the checkpoint selected on validation, the test split on the last and the best
checkpoint, per-class precision/recall/F1, the config, wall time and hardware). An unfinished
run (stopped or still running) gets the plots and a summary that says it is unfinished.
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

from cnn_jax.train.selection import best_record  # noqa: E402


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
    """Train, validation and test `key` ('loss' or 'accuracy') per epoch (test only where it was
    evaluated: the last epoch, or every epoch if asked), over the logged train steps; accuracy
    in %."""
    scale = 100.0 if key == "accuracy" else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 4))
    if steps:
        ax.plot([s["step"] for s in steps], [scale * s[key] for s in steps], color="0.75", lw=1,
                label=f"train {key} (logged steps)")
    for split, style, name in (("train", "o-", "train"), ("val", "s-", "validation"),
                               ("test", "D-", "test")):
        points = [(e["step"], scale * e[f"{split}_{key}"]) for e in epochs if f"{split}_{key}" in e]
        if points:
            when = "end of training" if split == "test" and len(points) == 1 else "epoch"
            ax.plot(*zip(*points), style, label=f"{name} {key} ({when})")
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


def _pct(value) -> str:
    return "" if value is None else f"{value:.2%}"


def _num(value) -> str:
    return "" if value is None else f"{value:.4f}"


def summary_markdown(workdir: str, config: dict, epochs: list[dict], final: dict | None,
                     environment: dict) -> str:
    """The summary; `final` (final_metrics.json) is None for an unfinished run."""
    last = epochs[-1]
    sessions = environment.get("sessions", [{}])
    lines = [
        f"# Run report: {os.path.basename(os.path.abspath(workdir))}", "",
        f"{config['model']['name']} on {config['dataset']['name']}, {config['num_epochs']} "
        f"epochs of batch {config['batch_size']}, {config['optimizer']['name']} at learning rate "
        f"{config['optimizer']['learning_rate']} ({config['schedule']['name']} schedule), "
        f"seed {config['seed']}.", ""]
    if final is None:
        lines += [f"**Unfinished run** (stopped, or still running): {len(epochs)} of "
                  f"{config['num_epochs']} epochs done (step {last['step']}); no "
                  "final_metrics.json yet, so no test figures unless the run evaluates the test "
                  "split every epoch. Rerun its training command to resume it.", ""]
    elif final.get("stopped_early"):
        lines += [f"Stopped early after epoch {final['epoch']} of {config['num_epochs']} "
                  f"(config.early_stopping: {config.get('early_stopping')}).", ""]
    lines += ["| metric | last epoch | best over the epochs |", "| --- | --- | --- |"]
    for key, name, fmt, higher in (("val_accuracy", "validation accuracy", _pct, True),
                                   ("val_loss", "validation loss", _num, False),
                                   ("val_macro_f1", "validation macro-F1", _num, True),
                                   ("train_accuracy", "train accuracy", _pct, True),
                                   ("train_loss", "train loss", _num, False)):
        values = [e[key] for e in epochs if key in e]
        if values:
            lines.append(f"| {name} | {fmt(last.get(key))} | "
                         f"{fmt(max(values) if higher else min(values))} |")
    best_key = config["checkpoint"].get("best_metric", "")
    best = best_record(epochs, best_key, config["checkpoint"].get("best_mode", "max"))
    if best_key and best:
        value = (_pct if best_key.endswith("accuracy") else _num)(best[best_key])
        lines += ["", f"Best checkpoint, selected on {best_key}: {value} at epoch "
                      f"{best['epoch']} (step {best['step']}; the latest of ties)."]
    else:
        lines += ["", "No checkpoint was selected on held-out data (no validation split, or "
                      "config.checkpoint.best_metric is empty)."]
    if final is not None:
        lines += ["", "## Test split", "", "| checkpoint | epoch | test accuracy | test loss | "
                  "test macro-F1 |", "| --- | --- | --- | --- | --- |",
                  f"| last | {final['epoch']} | {final['accuracy']:.2%} | {final['loss']:.4f} | "
                  f"{final['macro_f1']:.4f} |"]
        best = final.get("best")
        if best and "accuracy" in best:
            lines.append(f"| best by {best['selected_by']} | {best['epoch']} | "
                         f"{best['accuracy']:.2%} | {best['loss']:.4f} | {best['macro_f1']:.4f} |")
        lines += ["", "## Per class (test, last checkpoint)", "",
                  "| class | precision | recall | F1 |", "| --- | --- | --- | --- |"]
        for name, p, r, f1 in zip(final["class_names"], final["per_class_precision"],
                                  final["per_class_recall"], final["per_class_f1"]):
            lines.append(f"| {name} | {p:.4f} | {r:.4f} | {f1:.4f} |")
    elif "test_accuracy" in last:
        lines += ["", f"Test accuracy at epoch {last['epoch']}: {last['test_accuracy']:.2%}."]
    train_seconds = sum(e["epoch_seconds"] for e in epochs)
    plots = "loss.png, accuracy.png, learning_rate.png" + (", confusion_matrix.png" if final
                                                           else "")
    lines += [
        "", "## Time and hardware", "",
        f"- {train_seconds:.1f} s of training and evaluation over {len(epochs)} epochs, in "
        f"{len(sessions)} session(s) (a run resumed from a checkpoint has more than one)",
        f"- devices: {sessions[-1].get('device_kind')} x {len(sessions[-1].get('devices', []))}, "
        f"{sessions[-1].get('process_count')} process(es), host {sessions[-1].get('host')}",
        f"- Python {sessions[-1].get('python')}; "
        + ", ".join(f"{k} {v}" for k, v in sessions[-1].get("packages", {}).items()),
        "", "## Config", "", "```json", json.dumps(config, indent=2), "```", "",
        f"Plots: {plots}.",
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
               plot_curves(epochs, steps, "accuracy", "accuracy (%)",
                           os.path.join(out, "accuracy.png"))]
    if steps:
        written.append(plot_learning_rate(steps, os.path.join(out, "learning_rate.png")))
    final = read_json(final_path) if os.path.exists(final_path) else None
    if final is not None:
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
