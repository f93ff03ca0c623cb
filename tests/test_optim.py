"""Optimizers and schedules against their textbook update rules, written out in NumPy."""

import jax
import numpy as np
import optax
import pytest

from cnn_jax.train.optim import decay_mask, make_optimizer, make_schedule


def params_and_grads(seed=0):
    rng = np.random.default_rng(seed)
    params = {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=4)},
              "norm": {"scale": rng.normal(size=4)}}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape), params) for _ in range(4)]
    f32 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float32), t)
    return f32(params), [f32(g) for g in grads]


def run(tx, params, grads):
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


def run_numpy(rule, params, grads):
    """Applies `rule(p, g, slot, t) -> (p, slot)` leaf by leaf (t counts from 1)."""
    out = {}
    for layer, leaves in params.items():
        out[layer] = {}
        for name, p in leaves.items():
            p, slot = p.astype(np.float64), {}
            for t, g in enumerate(grads, 1):
                p, slot = rule(p, g[layer][name].astype(np.float64), slot, t)
            out[layer][name] = p
    return out


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_pytorch_rule(nesterov):
    lr, m = 0.1, 0.9
    params, grads = params_and_grads()

    def rule(p, g, slot, t):
        buf = g if t == 1 else m * slot["buf"] + g  # torch.optim.SGD
        step = g + m * buf if nesterov else buf
        return p - lr * step, {"buf": buf}

    got = run(make_optimizer({"name": "sgd", "momentum": m, "nesterov": nesterov}, lr), params, grads)
    assert_trees_close(got, run_numpy(rule, params, grads))


def test_adam_matches_formula():
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    params, grads = params_and_grads(1)

    def rule(p, g, slot, t):
        mu = b1 * slot.get("mu", 0) + (1 - b1) * g
        nu = b2 * slot.get("nu", 0) + (1 - b2) * g * g
        mhat, vhat = mu / (1 - b1**t), nu / (1 - b2**t)
        return p - lr * mhat / (np.sqrt(vhat) + eps), {"mu": mu, "nu": nu}

    got = run(make_optimizer({"name": "adam", "b1": b1, "b2": b2, "eps": eps}, lr), params, grads)
    assert_trees_close(got, run_numpy(rule, params, grads), rtol=1e-4)


def test_rmsprop_matches_pytorch_rule():
    lr, alpha, eps = 1e-2, 0.99, 1e-8
    params, grads = params_and_grads(2)

    def rule(p, g, slot, t):
        v = alpha * slot.get("v", 0) + (1 - alpha) * g * g
        return p - lr * g / (np.sqrt(v) + eps), {"v": v}

    tx = make_optimizer({"name": "rmsprop", "rms_decay": alpha, "eps": eps, "momentum": 0.0}, lr)
    assert_trees_close(run(tx, params, grads), run_numpy(rule, params, grads), rtol=1e-4)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_decoupled_decay_shrinks_kernels_only(name):
    lr, wd = 0.1, 0.01
    params, _ = params_and_grads()
    zero_grads = [jax.tree.map(np.zeros_like, params)]
    got = run(make_optimizer({"name": name, "momentum": 0.0, "weight_decay": wd}, lr),
              params, zero_grads)
    np.testing.assert_allclose(got["conv"]["kernel"], params["conv"]["kernel"] * (1 - lr * wd),
                               rtol=1e-6)
    np.testing.assert_array_equal(got["conv"]["bias"], params["conv"]["bias"])
    np.testing.assert_array_equal(got["norm"]["scale"], params["norm"]["scale"])


def test_adamw_matches_pytorch_rule():
    lr, wd = 1e-2, 0.1
    params, grads = params_and_grads(3)

    def rule(p, g, slot, t, decay):
        mu = 0.9 * slot.get("mu", 0) + 0.1 * g
        nu = 0.999 * slot.get("nu", 0) + 0.001 * g * g
        step = (mu / (1 - 0.9**t)) / (np.sqrt(nu / (1 - 0.999**t)) + 1e-8)
        return p - lr * (step + decay * p), {"mu": mu, "nu": nu}

    got = run(make_optimizer({"name": "adamw", "weight_decay": wd}, lr), params, grads)
    expected = run_numpy(lambda p, g, s, t: rule(p, g, s, t, wd if p.ndim >= 2 else 0.0),
                         params, grads)
    assert_trees_close(got, expected, rtol=1e-4)


def test_l2_penalty_is_added_to_the_gradient():
    lr, wd = 1e-2, 0.1
    params, grads = params_and_grads(4)
    got = run(make_optimizer({"name": "adam", "weight_decay": wd, "weight_decay_type": "l2"}, lr),
              params, grads)
    # Adam on g + wd * p for kernels: the penalty passes through Adam's normalisation.
    adam = optax.adam(lr)
    p, state = params, adam.init(params)
    for g in grads:
        g = jax.tree.map(lambda gi, pi: gi + wd * pi if pi.ndim >= 2 else gi, g, p)
        updates, state = adam.update(g, state, p)
        p = optax.apply_updates(p, updates)
    assert_trees_close(got, p)


def test_gradient_clipping_bounds_the_global_norm():
    params, grads = params_and_grads()
    big = [jax.tree.map(lambda g: 1e3 * g, grads[0])]
    got = run(make_optimizer({"name": "sgd", "momentum": 0.0, "grad_clip_norm": 2.0}, 1.0),
              params, big)
    step = jax.tree.map(lambda a, b: a - b, params, got)
    assert float(optax.tree.norm(step)) == pytest.approx(2.0, rel=1e-5)


def test_learning_rate_from_config_or_argument():
    params, grads = params_and_grads()
    from_cfg = run(make_optimizer({"name": "sgd", "momentum": 0.0, "learning_rate": 0.3}),
                   params, grads[:1])
    from_arg = run(make_optimizer({"name": "sgd", "momentum": 0.0}, 0.3), params, grads[:1])
    assert_trees_close(from_cfg, from_arg)
    np.testing.assert_allclose(from_cfg["conv"]["bias"],
                               params["conv"]["bias"] - 0.3 * grads[0]["conv"]["bias"], rtol=1e-6)
    with pytest.raises(ValueError, match="learning rate must be positive"):
        make_optimizer({"name": "sgd"}, 0.0)
    with pytest.raises(ValueError, match="No learning rate"):
        make_optimizer({"name": "sgd"})


def test_decay_mask():
    params, _ = params_and_grads()
    assert decay_mask(params) == {"conv": {"kernel": True, "bias": False}, "norm": {"scale": False}}


def test_schedules_follow_their_formulas():
    total, spe, lr = 100, 10, 0.4
    const = make_schedule({"name": "constant"}, lr, total, spe)
    assert [float(const(s)) for s in (0, 50, 99)] == pytest.approx([lr] * 3)

    step = make_schedule({"name": "step", "boundaries": (0.5, 0.75), "decay_factor": 0.1}, lr, total, spe)
    assert [float(step(s)) for s in (49, 50, 74, 75, 99)] == pytest.approx(
        [lr, lr * 0.1, lr * 0.1, lr * 0.01, lr * 0.01])

    cos = make_schedule({"name": "cosine"}, lr, total, spe)
    for s in (0, 25, 60, 100):
        assert float(cos(s)) == pytest.approx(lr * 0.5 * (1 + np.cos(np.pi * s / total)), abs=1e-7)

    warm = make_schedule({"name": "cosine", "warmup_epochs": 2}, lr, total, spe)
    assert [float(warm(s)) for s in (0, 10)] == pytest.approx([0.0, lr * 0.5])
    for s in (20, 60, 100):
        assert float(warm(s)) == pytest.approx(lr * 0.5 * (1 + np.cos(np.pi * (s - 20) / 80)), abs=1e-7)

    cycle = make_schedule({"name": "one_cycle", "pct_start": 0.3}, lr, total, spe)
    values = np.array([float(cycle(s)) for s in range(total)])
    assert values.argmax() == 30 and values.max() == pytest.approx(lr)
    assert values[0] == pytest.approx(lr / 25) and values[-1] < lr / 1000


@pytest.mark.parametrize("cfg,match", [
    ({"name": "sgdd"}, r"Unknown optimizer 'sgdd'. Valid choices: sgd, adam, adamw, rmsprop"),
    ({"name": "sgd", "weight_decay_type": "coupled"}, r"Unknown weight_decay_type 'coupled'.*decoupled, l2"),
    ({"name": "adamw", "weight_decay_type": "l2"}, "adamw is Adam with decoupled"),
    ({"name": "sgd", "momentum": 0.0, "nesterov": True}, "Nesterov momentum needs"),
    ({"name": "sgd", "weight_decay": -1.0}, "weight_decay must be >= 0"),
])
def test_optimizer_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(cfg, 0.1)


@pytest.mark.parametrize("cfg,match", [
    ({"name": "linear"}, r"Unknown schedule 'linear'. Valid choices: constant, step, cosine, one_cycle"),
    ({"name": "one_cycle", "warmup_epochs": 1}, "one_cycle has its own warm-up"),
    ({"name": "cosine", "warmup_epochs": 20}, "warm-up of 200 steps must be shorter"),
    ({"name": "step", "boundaries": (0.5, 2.0)}, "fractions of training"),
])
def test_schedule_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(cfg, 0.1, 100, 10)
