"""Transfer learning without PyTorch: partial loading with its report and errors, freezing
(bit-identical frozen parameters, no optimizer state for them, unfreezing, learning-rate
multipliers, clipping, frozen BatchNorm), feature extraction, the linear probe against
scikit-learn, the class-subset dataset, torchvision state-dict errors through .safetensors,
and `config.transfer` through the training loop."""

import gzip
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax.config import default_config
from cnn_jax.data import from_arrays, get_dataset
from cnn_jax.models import BasicBlock, ResNet, get_model
from cnn_jax.train import train_and_evaluate
from cnn_jax.train.checkpoint import restore_variables, save_variables
from cnn_jax.train.optim import make_optimizer
from cnn_jax.train.step import TrainState, train_step
from cnn_jax.transfer import (extract_features, feature_fn, freeze_batch_norm, layer_names,
                              load_features, load_pretrained, make_transfer_optimizer,
                              save_features, to_torchvision, train_linear_probe)
from cnn_jax.transfer.freeze import frozen_names, name_matcher, param_labels
from cnn_jax.transfer.setup import setup_transfer
from cnn_jax.transfer.torchvision import (from_torchvision, import_torchvision, load_state_dict,
                                         save_state_dict)

SHAPE = (8, 8, 3)
OPT = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 5e-4}


def small_resnet(num_classes):
    """Two basic blocks (the second with a downsample), BatchNorm, width 4: cheap to compile."""
    return ResNet(stage_sizes=(1, 1), block_cls=BasicBlock, num_classes=num_classes,
                  stem="cifar", width=4)


def init(model, seed=0, shape=SHAPE):
    """Random variables of `model`'s structure, drawn with NumPy: only the shapes are traced
    (compiling the initializers costs more than these tests)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        value = rng.normal(size=leaf.shape).astype(np.float32) * 0.3
        return jnp.asarray(np.abs(value) + 0.5 if path[-1].key == "var" else value)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def source():
    """The 'pretrained' variables: the small ResNet with 10 classes."""
    return init(small_resnet(10), seed=1)


@pytest.fixture(scope="module")
def target():
    """The new task's freshly initialized variables: 5 classes."""
    return init(small_resnet(5), seed=2)


def flat(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def batch():
    keys = jax.random.split(jax.random.key(1))
    return {"image": jax.random.normal(keys[0], (16, *SHAPE)),
            "label": jax.random.randint(keys[1], (16,), 0, 5)}


def train(state, batch, steps):
    step = jax.jit(train_step)
    for _ in range(steps):
        state, _ = step(state, batch)
    return state


# ---- partial loading ---------------------------------------------------------------------


def test_reinitializing_the_head_leaves_the_backbone_identical_to_the_checkpoint(source, target):
    loaded, report = load_pretrained(target, source, reinit=("head",))
    got, src, tgt = flat(loaded), flat(source), flat(target)
    assert set(got) == set(tgt)
    for name, value in got.items():
        if name.startswith("params/head/"):
            assert same(value, tgt[name])  # the fresh head, 5 classes
        else:
            assert same(value, src[name]), name  # the backbone, bit for bit
    assert got["params/head/kernel"].shape == (8, 5)
    assert sorted(report.reinitialized) == ["params/head/bias", "params/head/kernel"]
    assert sorted(report.ignored) == ["params/head/bias", "params/head/kernel"]  # the old head
    assert len(report.loaded) == len(got) - 2
    assert "params/stem/conv/kernel" in report.loaded
    assert "batch_stats/stem/norm/mean" in report.loaded
    text = str(report)
    assert "re-initialized 2: params/head/bias, params/head/kernel" in text
    assert f"loaded {len(report.loaded)} arrays" in text


def test_load_errors_list_every_missing_unexpected_and_misshaped_array(source, target):
    source = jax.tree.map(lambda x: x, source)  # a copy to edit
    source["params"]["extra"] = {"kernel": np.zeros((3, 3))}
    del source["params"]["layer2_0"]["conv2"]["norm"]["scale"]
    del source["batch_stats"]["stem"]
    with pytest.raises(ValueError) as error:
        load_pretrained(target, source)
    message = str(error.value)
    assert "missing from the source (3):" in message
    for name in ("params/layer2_0/conv2/norm/scale (8,)", "batch_stats/stem/norm/mean (4,)",
                 "batch_stats/stem/norm/var (4,)"):
        assert name in message
    assert "unexpected (in the source, not in the model) (1):\n    params/extra/kernel (3, 3)" in message
    assert "shape mismatch (2):" in message
    assert "params/head/kernel: source (8, 10), model (8, 5)" in message
    assert "reinit=('head',)" in message
    # reinit covers the head's mismatch and the extra module; what is still wrong is listed.
    with pytest.raises(ValueError, match=r"missing from the source \(3\)") as error:
        load_pretrained(target, source, reinit="head,extra")
    assert "shape mismatch" not in str(error.value) and "unexpected" not in str(error.value)


def test_bad_pattern_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Invalid parameter-name pattern 'layer\[1'"):
        load_pretrained({}, {}, reinit="layer[1")


def test_save_variables_round_trip(tmp_path, target):
    variables = target
    save_variables(str(tmp_path), variables, {"model": {"name": "resnet18_cifar"}})
    restored, config = restore_variables(str(tmp_path))
    assert config["model"]["name"] == "resnet18_cifar"
    assert jax.tree.all(jax.tree.map(same, restored, jax.tree.map(np.asarray, variables)))


# ---- freezing and learning rates ----------------------------------------------------------


def test_frozen_parameters_stay_bit_identical_and_the_others_change(batch, target):
    model = small_resnet(5)
    tx = make_transfer_optimizer({**OPT, "grad_clip_norm": 1.0}, optax.cosine_decay_schedule(0.1, 10),
                                 freeze="backbone")
    state = TrainState.create(apply_fn=freeze_batch_norm(model.apply, name_matcher("backbone")),
                              params=target["params"], batch_stats=target["batch_stats"], tx=tx,
                              rng=jax.random.key(0))
    before_params, before_stats = flat(state.params), flat(state.batch_stats)
    state = train(state, batch, 3)
    after_params, after_stats = flat(state.params), flat(state.batch_stats)
    for name, value in after_params.items():
        if name.startswith("head/"):
            assert not same(value, before_params[name]), name
        else:
            assert same(value, before_params[name]), name
    for name, value in after_stats.items():  # BatchNorm of the frozen backbone: frozen too
        assert same(value, before_stats[name]), name
    # No optimizer state for the frozen parts: the momentum covers the head alone.
    head_size = sum(v.size for v in jax.tree.leaves(state.params["head"]))
    arrays = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert sum(x.size for x in arrays) == head_size


@pytest.fixture(scope="module")
def params_and_grads(target):
    rng = np.random.default_rng(5)
    params = target["params"]
    return params, jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)


def updates(tx, params, grads, steps=1):
    """The updates of `steps` calls of `tx` on the same gradients, and the final state."""
    update, state = jax.jit(tx.update), tx.init(params)
    for _ in range(steps):
        out, state = update(grads, state, params)
        params = optax.apply_updates(params, out)
    return out, state


def test_without_freezing_the_transfer_optimizer_is_make_optimizer(params_and_grads):
    """The groups' arithmetic reproduces the plain optimizer exactly (Adam, decay, clipping)."""
    params, grads = params_and_grads
    cfg = {"name": "adamw", "learning_rate": 1e-2, "weight_decay": 1e-2, "grad_clip_norm": 0.5}
    schedule = optax.cosine_decay_schedule(1e-2, 10)
    a, _ = updates(make_optimizer(cfg, schedule), params, grads, steps=3)
    b, _ = updates(make_transfer_optimizer(cfg, schedule), params, grads, steps=3)
    assert jax.tree.all(jax.tree.map(same, a, b))


def test_learning_rate_multipliers_scale_each_part(params_and_grads):
    """Plain SGD: the update of a part with multiplier m is m times the update at 1x."""
    cfg = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.0}
    params, grads = params_and_grads

    def update(tx):
        return flat(updates(tx, params, grads)[0])

    base = update(make_transfer_optimizer(cfg, 0.1))
    scaled = update(make_transfer_optimizer(cfg, 0.1, lr_multipliers="stem=0.5,backbone=0.1"))
    for name, delta in scaled.items():
        m = 0.5 if name.startswith("stem/") else 1.0 if name.startswith("head/") else 0.1
        np.testing.assert_allclose(delta, m * base[name], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(base["head/kernel"], -0.1 * np.asarray(grads["head"]["kernel"]),
                               rtol=1e-6)
    labels = flat(param_labels(params, lr_multipliers="stem=0.5,backbone=0"))
    assert labels["stem/conv/kernel"] == "lr=0.5" and labels["head/kernel"] == "lr=1"
    assert labels["layer1_0/conv1/conv/kernel"] == "frozen"  # a multiplier of 0 freezes


def test_unfreezing_after_n_steps_starts_a_fresh_optimizer_state(params_and_grads):
    cfg = {"name": "adam", "learning_rate": 1e-3}
    n = 2
    params, grads = params_and_grads
    tx = make_transfer_optimizer(cfg, 1e-3, freeze="backbone", unfreeze_after=n)
    update = jax.jit(tx.update)
    state = tx.init(params)
    for step in range(n):
        out, state = update(grads, state, params)
        for name, u in flat(out).items():  # held: exactly zero; the head trains
            assert np.any(u) == name.startswith("head/"), (step, name)
    # The held group's Adam state is still exactly its initial state (count 0, moments 0) ...
    held = state[0].inner_states[f"lr=1,held<{n}"].inner_state
    assert int(held.count) == n
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(held.inner))
    # ... so update n+1 is Adam's first step for the backbone: -lr * g / (|g| + eps).
    new_updates, new_state = update(grads, state, params)
    g = flat(grads)
    for name, u in flat(new_updates).items():
        if not name.startswith("head/"):
            np.testing.assert_allclose(u, -1e-3 * g[name] / (np.abs(g[name]) + 1e-8), rtol=1e-5,
                                       err_msg=name)
    # The same tree structure throughout: nothing recompiles, checkpoints resume across it.
    assert jax.tree.structure(new_state) == jax.tree.structure(tx.init(params))


def test_clipping_sees_only_the_trainable_gradients(params_and_grads):
    """With the backbone frozen, the head's update is clipped by the head's gradient norm
    alone (the frozen gradients, much larger here, are left out)."""
    cfg = {"name": "sgd", "learning_rate": 1.0, "momentum": 0.0, "grad_clip_norm": 1e-3}
    params, grads = params_and_grads
    grads = {**jax.tree.map(lambda g: 1e3 * g, grads), "head": grads["head"]}
    tx = make_transfer_optimizer(cfg, 1.0, freeze="backbone")
    out, _ = updates(tx, params, grads)
    head = np.concatenate([np.ravel(grads["head"][k]) for k in ("bias", "kernel")])
    expected = jax.tree.map(lambda g: -1e-3 * g / np.linalg.norm(head), grads["head"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), out["head"], expected)
    assert not any(np.any(u) for k, u in flat(out).items() if not k.startswith("head/"))


def test_frozen_batch_norm_computes_the_inference_function_in_training(batch, target):
    model = small_resnet(5)
    variables = {**target, "batch_stats": jax.tree.map(lambda x: x + 0.3, target["batch_stats"])}
    x = batch["image"]

    @jax.jit
    def run(variables):
        frozen = freeze_batch_norm(model.apply, lambda name: True)
        out, new = frozen(variables, x, train=True, mutable=["batch_stats"])
        grads = jax.grad(lambda p: frozen({**variables, "params": p}, x, train=True,
                                          mutable=["batch_stats"])[0].sum())(variables["params"])
        only_stem = freeze_batch_norm(model.apply, name_matcher("stem"))
        _, partly = only_stem(variables, x, train=True, mutable=["batch_stats"])
        return out, new, grads, partly, model.apply(variables, x, train=False)

    out, new, grads, partly, inference = run(variables)
    np.testing.assert_allclose(out, inference, rtol=1e-6, atol=1e-6)
    assert jax.tree.all(jax.tree.map(same, new["batch_stats"], variables["batch_stats"]))
    assert np.any(np.asarray(grads["stem"]["norm"]["scale"]))  # scale and bias still train
    # Only the matching layers: the rest normalises with batch statistics and updates.
    assert same(partly["batch_stats"]["stem"]["norm"]["mean"],
                variables["batch_stats"]["stem"]["norm"]["mean"])
    assert not same(partly["batch_stats"]["layer1_0"]["conv1"]["norm"]["mean"],
                    variables["batch_stats"]["layer1_0"]["conv1"]["norm"]["mean"])


def test_frozen_names_and_bad_options():
    model = get_model("lenet5", num_classes=5)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))["params"]
    assert sorted(frozen_names(params, freeze="backbone")) == [
        f"{m}/{p}" for m in ("C1/conv", "C3/conv", "C5/conv", "F6/dense") for p in ("bias", "kernel")]
    assert frozen_names(params, freeze="C1,C3") == ["C1/conv/bias", "C1/conv/kernel",
                                                    "C3/conv/bias", "C3/conv/kernel"]
    with pytest.raises(ValueError, match="is not 'pattern=multiplier'"):
        make_transfer_optimizer(OPT, 0.1, lr_multipliers="backbone")
    with pytest.raises(ValueError, match="must be >= 0"):
        make_transfer_optimizer(OPT, 0.1, lr_multipliers={"head": -1.0})
    with pytest.raises(ValueError, match="unfreeze_after must be an int >= 0"):
        make_transfer_optimizer(OPT, 0.1, freeze="backbone", unfreeze_after=-1)


# ---- features and the linear probe --------------------------------------------------------


def test_features_from_named_layers():
    model = get_model("lenet5", num_classes=5)
    variables = init(model, shape=(32, 32, 1))
    images = jax.random.normal(jax.random.key(3), (6, 32, 32, 1))

    @jax.jit
    def run(variables):
        _, inter = model.apply(variables, images, capture_intermediates=True)
        return (inter["intermediates"], feature_fn(model)(variables, images),
                feature_fn(model, "C3")(variables, images))

    inter, penultimate, c3 = run(variables)
    np.testing.assert_array_equal(penultimate, inter["F6"]["__call__"][0])
    assert penultimate.shape == (6, 84)
    np.testing.assert_allclose(c3, inter["C3"]["__call__"][0].mean(axis=(1, 2)), rtol=1e-5)
    shapes = {spatial: jax.eval_shape(feature_fn(model, "C3", spatial), variables, images).shape
              for spatial in ("flatten", "none", "max")}
    assert shapes == {"flatten": (6, 10 * 10 * 16), "none": (6, 10, 10, 16), "max": (6, 16)}
    assert layer_names(model, variables, (32, 32, 1))[:3] == ["C1", "C1/conv", "C3"]
    with pytest.raises(ValueError, match="has no layer 'conv9'. Layers: penultimate, C1, C1/conv"):
        jax.eval_shape(feature_fn(model, "conv9"), variables, images)
    with pytest.raises(ValueError, match="Unknown spatial reduction 'mean'"):
        feature_fn(model, spatial="mean")


def test_extract_features_covers_the_dataset_once_and_saves(tmp_path):
    model = get_model("lenet5", num_classes=3)
    variables = init(model, shape=(32, 32, 1))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 32, 32, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, 37)
    dataset = from_arrays(images, labels, ("a", "b", "c"))
    features, got_labels = extract_features(model, variables, dataset, batch_size=16)
    expected = feature_fn(model)(variables, jnp.asarray(images, jnp.float32) / 255.0)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_labels, labels)
    save_features(tmp_path / "f.npz", features, got_labels, layer="penultimate")
    f, y = load_features(tmp_path / "f.npz")
    np.testing.assert_array_equal(f, features)
    np.testing.assert_array_equal(y, labels)
    save_features(tmp_path / "f.npy", features)
    assert load_features(tmp_path / "f.npy")[1] is None
    with pytest.raises(ValueError, match=r"saved as .npz \(features and labels\) or .npy"):
        save_features(tmp_path / "f.csv", features)


def test_linear_probe_matches_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, d, k, l2 = 300, 20, 4, 1e-2
    y = rng.integers(0, k, n)
    x = (rng.normal(size=(k, d))[y] + 1.5 * rng.normal(size=(n, d))) * 3 + 1
    probe = train_linear_probe(x, y, k, l2=l2)
    xs = (x - x.mean(0)) / x.std(0)
    reference = LogisticRegression(C=1 / (l2 * n), tol=1e-10, max_iter=10_000).fit(xs, y)
    np.testing.assert_allclose(probe.kernel, reference.coef_.T, atol=1e-4)
    np.testing.assert_allclose(probe.bias, reference.intercept_, atol=1e-4)
    np.testing.assert_array_equal(probe.predict(x), reference.predict(xs))
    assert probe.accuracy(x, y) == pytest.approx(reference.score(xs, y))


# ---- the class-subset dataset ------------------------------------------------------------


def test_subset_dataset_relabels_and_draws_few_labels():
    train = get_dataset("subset", "train", base="digits", classes="5-9", train_per_class=10,
                        subset_seed=1)
    assert len(train) == 50 and train.class_names == ("5", "6", "7", "8", "9")
    assert np.bincount(train.source.labels).tolist() == [10] * 5
    digits = get_dataset("digits", "train")
    assert train.mean == digits.mean  # the base's normalization
    again = get_dataset("subset", "train", base="digits", classes="5-9", train_per_class=10,
                        subset_seed=1)
    other = get_dataset("subset", "train", base="digits", classes="5-9", train_per_class=10,
                        subset_seed=2)
    assert np.array_equal(train.source.images, again.source.images)
    assert not np.array_equal(train.source.images, other.source.images)
    test = get_dataset("subset", "test", base="digits", classes="7,2", train_per_class=10)
    full = get_dataset("digits", "test")
    assert len(test) == int(np.isin(full.source.labels, [7, 2]).sum())  # test keeps every example
    first = full.source.labels[np.isin(full.source.labels, [7, 2])][0]
    assert test.source.labels[0] == (0 if first == 7 else 1)  # 7 -> 0, 2 -> 1: the given order
    with pytest.raises(ValueError, match="must be distinct class indices in \\[0, 10\\)"):
        get_dataset("subset", "train", base="digits", classes="8-12")
    with pytest.raises(ValueError, match="fewer than train_per_class=1000"):
        get_dataset("subset", "train", base="digits", classes="1", train_per_class=1000)
    with pytest.raises(ValueError, match="Dataset 'digits' takes no 'data_dir'"):
        get_dataset("subset", "train", base="digits", data_dir="/x")


# ---- torchvision state dicts without PyTorch -----------------------------------------------


NARROW = dict(width=8)  # ResNet-18's layout and key names at 1/8 of its width: cheap


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision-format ResNet-18 (10 classes) written by cnn_jax's own export, as
    .safetensors: no PyTorch involved."""
    model = get_model("resnet18", num_classes=10, **NARROW)
    variables = init(model, shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_state_dict(path, to_torchvision(variables, "resnet18"))
    return path, variables


def test_safetensors_import_needs_no_torch_and_round_trips(resnet18_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails
    path, variables = resnet18_file
    state = load_state_dict(path)
    assert state["fc.weight"].shape == (10, 64)
    assert state["layer1.0.conv1.weight"].shape == (8, 8, 3, 3)
    assert state["bn1.num_batches_tracked"].shape == () and int(state["bn1.num_batches_tracked"]) == 0
    shapes = jax.eval_shape(lambda: variables)
    loaded, report = from_torchvision(state, "resnet18", shapes)
    assert jax.tree.all(jax.tree.map(same, loaded, variables))
    assert len(report.loaded) == 102 and report.reinitialized == []
    assert len(report.ignored) == 20 and report.ignored[0] == "bn1.num_batches_tracked"


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def test_torchvision_fixture_imports_without_torch_to_torchvisions_logits(monkeypatch):
    """tests/fixtures/resnet18_cifar_w2*.safetensors, written by torchvision's own ResNet
    modules (make_torchvision_fixtures.py): an outside layout and known values. Imported with
    `import torch` failing, they give torchvision's logits; the export gives the file back,
    key for key in torchvision's order and bit for bit."""
    from safetensors import safe_open

    monkeypatch.setitem(sys.modules, "torch", None)
    path = os.path.join(FIXTURES, "resnet18_cifar_w2.safetensors")
    io = load_state_dict(os.path.join(FIXTURES, "resnet18_cifar_w2_io.safetensors"))
    model, variables, report = import_torchvision(path, "resnet18_cifar", num_classes=3, width=2,
                                                  input_shape=(12, 10, 3))
    logits = np.asarray(model.apply(variables, io["input"].transpose(0, 2, 3, 1), train=False))
    np.testing.assert_allclose(logits, io["logits"], rtol=1e-5, atol=1e-5 * np.abs(io["logits"]).max())
    assert report.reinitialized == [] and len(report.loaded) == 102 and len(report.ignored) == 20
    with safe_open(path, "np") as f:
        order = f.metadata()["order"].split(",")
    state = load_state_dict(path)
    exported = to_torchvision(variables, "resnet18_cifar")
    assert list(exported) == order
    for key in order:
        if not key.endswith("num_batches_tracked"):
            assert np.array_equal(exported[key], state[key]), key


@pytest.mark.parametrize("name", ["alexnet", *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
                                  *(f"resnet{d}" for d in (18, 34, 50, 101, 152))])
def test_torchvision_keys_and_shapes_match_torchvisions_layout(name):
    """Every model's torchvision names and shapes, in torchvision's order, against the layout
    torchvision itself gives (tests/fixtures/torchvision_keys.json.gz; no PyTorch needed)."""
    from cnn_jax.models import input_shape
    from cnn_jax.transfer.loading import flatten
    from cnn_jax.transfer.torchvision import _torch_order, torch_shape, torchvision_keys

    with gzip.open(os.path.join(FIXTURES, "torchvision_keys.json.gz"), "rt") as f:
        expected = [(k, tuple(shape)) for k, shape in json.load(f)["models"][name]
                    if not k.endswith("num_batches_tracked")]
    model = get_model(name, num_classes=1000)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *input_shape(name))))
    table = torchvision_keys(name, shapes)
    flat = flatten(shapes)
    got = {table[path].key: torch_shape(tuple(value.shape), table[path].layout)
           for path, value in flat.items()}
    assert sorted(got.items(), key=lambda kv: _torch_order(kv[0])) == expected


def test_state_dict_errors_list_missing_unexpected_and_misshaped_keys(resnet18_file):
    path, _ = resnet18_file
    state = load_state_dict(path)
    target = init(get_model("resnet18", num_classes=5, **NARROW), shape=(32, 32, 3))
    del state["layer2.0.downsample.1.running_var"]
    state["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:, :, :2, :2]
    with pytest.raises(ValueError) as error:
        from_torchvision(state, "resnet18", target)
    message = str(error.value)
    assert "Cannot load the torchvision state dict into 'resnet18'" in message
    assert "missing from the source (1):\n    layer2.0.downsample.1.running_var (16,)" in message
    assert "unexpected (in the source, not in the model) (1):\n    layer5.0.conv1.weight (1, 1, 1, 1)" in message
    assert "layer1.0.conv1.weight: file (8, 8, 2, 2), model expects (8, 8, 3, 3)" in message
    assert "fc.weight: file (10, 64), model expects (5, 64)" in message
    assert "fc.bias: file (10,), model expects (5,)" in message


def test_missing_or_other_sized_head_is_allowed_by_reinit(resnet18_file):
    path, source = resnet18_file
    target = init(get_model("resnet18", num_classes=5, **NARROW), shape=(32, 32, 3))
    headless = {k: v for k, v in load_state_dict(path).items() if not k.startswith("fc.")}
    with pytest.raises(ValueError, match=r"(?s)missing from the source \(2\).*fc.bias.*"
                                         r"These are the classifier's keys: pass reinit=\('head',\)"):
        from_torchvision(headless, "resnet18", target)
    for state in (headless, load_state_dict(path)):  # no head, or a 10-class head
        loaded, report = from_torchvision(state, "resnet18", target, reinit=("head",))
        assert same(loaded["params"]["head"]["kernel"], target["params"]["head"]["kernel"])
        assert same(loaded["params"]["stem"]["conv"]["kernel"], source["params"]["stem"]["conv"]["kernel"])
        assert report.reinitialized == ["params/head/bias", "params/head/kernel"]


def test_pth_without_torch_says_to_install_it_or_use_safetensors(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"needs PyTorch: `pip install torch`.*\.safetensors"):
        load_state_dict(path)
    with pytest.raises(ValueError, match=r"Unknown state-dict file type '.ckpt'"):
        (tmp_path / "w.ckpt").write_bytes(b"")
        load_state_dict(tmp_path / "w.ckpt")
    with pytest.raises(ValueError, match="No torchvision layout for model 'lenet5'. Supported: alexnet"):
        to_torchvision({}, "lenet5")


# ---- config.transfer in the training loop --------------------------------------------------


def digits_config(classes, **transfer):
    config = default_config()
    config.dataset.name = "subset"
    config.dataset.base = "digits"
    config.dataset.classes = classes
    config.num_epochs = 1
    config.eval_batch_size = 128
    config.train_transforms = config.eval_transforms = "normalize"
    for key, value in transfer.items():
        config.transfer[key] = value
    return config


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """A LeNet-5 run on digits 0-4 (one epoch), checkpointed by the training loop."""
    workdir = str(tmp_path_factory.mktemp("runs") / "pretrain")
    state, _ = train_and_evaluate(digits_config("0-4"), workdir, log=lambda s: None)
    return workdir, state.params


def test_config_transfer_through_the_training_loop(tmp_path, pretrained_run):
    """Train on digits 5-9 from the 0-4 run with the backbone frozen: the backbone leaves the
    run bit-identical to the checkpoint."""
    workdir, source_params = pretrained_run
    lines = []
    config = digits_config("5-9", init_from=workdir, freeze="backbone")
    config.dataset.train_per_class = 20
    config.num_epochs = 3
    tuned, history = train_and_evaluate(config, str(tmp_path / "tuned"), log=lines.append)
    assert len(history) == 3
    source = flat(source_params)
    for name, value in flat(tuned.params).items():
        assert same(value, source[name]) != name.startswith("head/"), name
    log = "\n".join(lines)
    assert "transfer: loaded 8 arrays (60,856 values) from" in log
    assert "re-initialized 2: params/head/bias, params/head/kernel" in log
    assert "transfer: 60,856 of 61,281 parameters frozen for the whole run (8 arrays); 425 train" in log
    assert json.load(open(tmp_path / "tuned" / "config.json"))["transfer"]["freeze"] == "backbone"


def test_features_command_writes_features_and_probes(pretrained_run, tmp_path, capsys):
    from experiments import features

    workdir, params = pretrained_run
    out = tmp_path / "f.npz"
    result = features.main(["--workdir", workdir, "--layer", "C5", "--out", str(out), "--probe"])
    with np.load(out) as saved:
        assert saved["train_features"].shape == (len(get_dataset("subset", "train", base="digits",
                                                                  classes="0-4")), 120)
        assert saved["test_labels"].max() == 4 and str(saved["layer"]) == "C5"
    assert result["probe_test_accuracy"] > 0.5
    assert "linear probe: train accuracy" in capsys.readouterr().out
    features.main(["--workdir", workdir, "--list_layers"])
    assert capsys.readouterr().out.split() == ["penultimate", "C1", "C1/conv", "C3", "C3/conv",
                                               "C5", "C5/conv", "F6", "F6/dense", "head"]


@pytest.mark.parametrize("transfer,match", [
    ({"freeze_batch_norm": "some"}, "Unknown config.transfer.freeze_batch_norm 'some'"),
    ({"unfreeze_after_steps": 5}, "names nothing to unfreeze"),
    ({"freeze": "layer[", "unfreeze_after_steps": 5}, "Invalid parameter-name pattern 'layer\\['"),
    ({"lr_multipliers": "backbone=x"}, "'x' is not a number"),
    ({"init_from": "/nonexistent/run"}, "is neither a run's workdir nor a torchvision"),
])
def test_bad_transfer_config_is_a_clear_error(transfer, match, target):
    state = TrainState.create(apply_fn=small_resnet(5).apply, params=target["params"],
                              batch_stats=target["batch_stats"], tx=optax.sgd(0.1))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        setup_transfer(digits_config("0-1", **transfer), state, 0.1, log=lambda s: None)
