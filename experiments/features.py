"""Features of a trained run from any named layer, for its dataset's train and test splits,
saved to disk; optionally a linear probe trained on them.

    python -m experiments.features --workdir runs/lenet5_digits --layer penultimate \
        --out runs/lenet5_digits/features.npz --probe

The run's model and dataset come from WORKDIR/config.json, its variables from
`cnn_jax.train.checkpoint.restore_variables`; images go through the run's `eval_transforms`.
`--layer` is a module path (`C5`, `layer4_1`, `fc2`, ...) or `penultimate` (the head's input);
`--list_layers` prints them. The .npz holds `train_features`, `train_labels`, `test_features`,
`test_labels` and `layer`.
"""

from __future__ import annotations

import argparse
import os

import jax.numpy as jnp
import numpy as np

from cnn_jax.data import get_dataset
from cnn_jax.data.transforms import make_preprocess
from cnn_jax.models import get_model
from cnn_jax.train.checkpoint import restore_variables
from cnn_jax.train.loop import model_input_shape
from cnn_jax.transfer import extract_features, layer_names, train_linear_probe
from cnn_jax.transfer.features import SPATIAL


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a finished run's workdir")
    parser.add_argument("--layer", default="penultimate")
    parser.add_argument("--spatial", default="avg", choices=SPATIAL,
                        help="how a feature map (N, H, W, C) is reduced")
    parser.add_argument("--out", default="", help="the .npz to write (default WORKDIR/features_<layer>.npz)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--probe", action="store_true", help="train a linear probe and report it")
    parser.add_argument("--probe_l2", type=float, default=1e-3)
    parser.add_argument("--list_layers", action="store_true")
    args = parser.parse_args(argv)

    variables, config = restore_variables(args.workdir)
    dataset = config["dataset"]
    options = {k: v for k, v in dataset.items() if k != "name"}
    train = get_dataset(dataset["name"], "train", **options)
    test = get_dataset(dataset["name"], "test", **options)
    model_options = {k: v for k, v in config["model"].items() if k != "name"}
    model_options["dtype"] = jnp.dtype(model_options.get("dtype", "float32"))
    model = get_model(config["model"]["name"], num_classes=train.num_classes, **model_options)
    preprocess = make_preprocess(config.get("eval_transforms", ""), train=False,
                                 num_classes=train.num_classes, mean=train.mean, std=train.std)
    if args.list_layers:
        shape = model_input_shape(preprocess, train)
        print("penultimate\n" + "\n".join(layer_names(model, variables, shape)))
        return {}
    kwargs = dict(layer=args.layer, spatial=args.spatial, batch_size=args.batch_size,
                  preprocess=preprocess)
    x_train, y_train = extract_features(model, variables, train, **kwargs)
    x_test, y_test = extract_features(model, variables, test, **kwargs)
    out = args.out or os.path.join(args.workdir, f"features_{args.layer.replace('/', '_')}.npz")
    np.savez(out, train_features=x_train, train_labels=y_train, test_features=x_test,
             test_labels=y_test, layer=args.layer)
    print(f"{args.layer}: train {x_train.shape}, test {x_test.shape} -> {out}")
    result = {"path": out, "train_shape": x_train.shape, "test_shape": x_test.shape}
    if args.probe:
        probe = train_linear_probe(x_train, y_train, train.num_classes, l2=args.probe_l2)
        result["probe_test_accuracy"] = probe.accuracy(x_test, y_test)
        print(f"linear probe: train accuracy {probe.accuracy(x_train, y_train):.2%}, "
              f"test accuracy {result['probe_test_accuracy']:.2%} "
              f"({probe.iterations} L-BFGS iterations)")
    return result


if __name__ == "__main__":
    import sys

    from cnn_jax.errors import run_main
    sys.exit(run_main(main))
