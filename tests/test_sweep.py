"""Random sweeps (`--random N --seed S`): the draws reproducible, within their ranges and
distributed as named (against SciPy's tests and a plain NumPy re-draw); an interrupted trial
resumed from its checkpoint when the command is rerun."""

import csv
import importlib.util
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from cnn_jax.config import load_config_file
from experiments import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "lenet5_digits.py")
_spec = importlib.util.spec_from_file_location(
    "fault_at_step", os.path.join(ROOT, "tests", "helpers", "fault_at_step.py"))
fault_at_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fault_at_step)

SPECS = ["optimizer.learning_rate=loguniform(1e-4, 0.1)", "optimizer.momentum=uniform(0.8,0.99)",
         "batch_size=randint(16,20)", "model.act=relu,tanh"]


def params():
    config = load_config_file(CONFIG)
    return [sweep.parse_param(spec, config) for spec in SPECS]


def test_parse_ranges_and_lists():
    assert params() == [("optimizer.learning_rate", ("loguniform", 1e-4, 0.1)),
                        ("optimizer.momentum", ("uniform", 0.8, 0.99)),
                        ("batch_size", ("randint", 16.0, 20.0)),
                        ("model.act", ["relu", "tanh"])]
    with pytest.raises(ValueError, match="need --random N"):
        sweep.trials(params(), 0, 0)


def test_random_draws_reproducible_in_range_and_distributed_as_named():
    n = 4000
    draws = sweep.trials(params(), n, seed=5)
    assert draws == sweep.trials(params(), n, seed=5)
    assert draws[:10] != sweep.trials(params(), n, seed=6)[:10]
    lr = np.array([d["optimizer.learning_rate"] for d in draws])
    momentum = np.array([d["optimizer.momentum"] for d in draws])
    batch = [d["batch_size"] for d in draws]
    act = [d["model.act"] for d in draws]
    assert all(type(d["optimizer.learning_rate"]) is float for d in draws)
    assert all(type(b) is int for b in batch)
    assert lr.min() >= 1e-4 and lr.max() <= 0.1 and momentum.min() >= 0.8 and momentum.max() <= 0.99
    # loguniform: the logarithm is uniform; uniform is uniform (Kolmogorov-Smirnov).
    log_a, log_b = math.log(1e-4), math.log(0.1)
    assert stats.kstest(np.log(lr), stats.uniform(log_a, log_b - log_a).cdf).pvalue > 0.01
    assert stats.kstest(momentum, stats.uniform(0.8, 0.19).cdf).pvalue > 0.01
    assert stats.kstest(lr, stats.uniform(1e-4, 0.1 - 1e-4).cdf).pvalue < 1e-6  # not uniform
    # randint(a, b) includes b; every value (and list item) about equally often (chi-square).
    counts = [batch.count(v) for v in range(16, 21)]
    assert sum(counts) == n and stats.chisquare(counts).pvalue > 0.01
    assert stats.chisquare([act.count("relu"), act.count("tanh")]).pvalue > 0.01

    # The same draws from a plain NumPy generator, in the documented order (per trial, per key).
    rng = np.random.default_rng(5)
    for d in draws[:50]:
        assert d["optimizer.learning_rate"] == math.exp(rng.uniform(log_a, log_b))
        assert d["optimizer.momentum"] == rng.uniform(0.8, 0.99)
        assert d["batch_size"] == rng.integers(16, 21)
        assert d["model.act"] == ["relu", "tanh"][rng.integers(2)]


@pytest.mark.slow
def test_random_sweep_resumes_an_interrupted_trial(tmp_path, monkeypatch, capsys):
    import cnn_jax.data as data_lib
    monkeypatch.setattr(data_lib, "train_iterator", data_lib.train_iterator)  # restored after
    real = data_lib.train_iterator
    argv = ["--config", CONFIG, "--workdir", str(tmp_path), "--random", "1", "--seed", "7",
            "--param", "optimizer.learning_rate=loguniform(0.01,0.1)",
            "--param", "batch_size=randint(48,64)",
            "--config.num_epochs=1", "--config.eval_batch_size=360"]
    config = load_config_file(CONFIG)
    (drawn,) = sweep.trials([sweep.parse_param(p, config) for p in argv[9:12:2]], 1, 7)
    trial = tmp_path / sweep.trial_name(0, drawn)

    fault_at_step.inject(6, "SIGINT")  # Ctrl-C during the trial's step 6
    assert sweep.main(argv) == 0  # a stop is a clean exit that says how to resume
    err = capsys.readouterr().err
    assert "after step 6" in err and f"Rerun the same sweep command to resume trial {trial.name}" in err
    assert not (trial / "final_metrics.json").exists()
    data_lib.train_iterator = real
    capsys.readouterr()
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert f"[1/1] {trial.name}: training" in out
    assert "Resuming from the checkpoint of step 6" in out
    saved = json.load(open(trial / "config.json"))
    assert saved["optimizer"]["learning_rate"] == drawn["optimizer.learning_rate"]
    assert saved["batch_size"] == drawn["batch_size"]
    (row,) = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert float(row["optimizer.learning_rate"]) == drawn["optimizer.learning_rate"]
    assert int(row["batch_size"]) == drawn["batch_size"]
    (epoch,) = [json.loads(line) for line in open(trial / "metrics.jsonl")]
    assert epoch["epoch"] == 1 and epoch["step"] > 6


@pytest.mark.parametrize("spec,match", [
    ("optimizer.learning_rate=loguniform(0,1)", "needs 0 < a < b"),
    ("batch_size=randint(5,2)", "needs a < b"),
    ("batch_size=randint(2.5,8)", "needs integers"),
    ("optimizer.learning_rate=uniform(a,1)", "needs two numbers"),
])
def test_bad_ranges_are_one_clear_error(spec, match):
    from cnn_jax.config import load_config_file
    from experiments.sweep import parse_param
    config = load_config_file("experiments/configs/lenet5_digits.py")
    with pytest.raises(ValueError, match=match):
        parse_param(spec, config)
