"""MobileNetV2 (the CIFAR variant of kuangliu/pytorch-cifar: stride 1 in the stem and the
second stage) on CIFAR-10 through TFDS.

Prepare once (TFDS's builder downloads it and needs TensorFlow: pip install "cnn_jax[prepare]"):
    python -m cnn_jax.data.prepare cifar10
Command:
    python -m experiments.train --config experiments/configs/mobilenet_v2_cifar10.py \
        --workdir runs/mobilenet_v2_cifar10 [--config.dataset.data_dir=DIR]

Result: not run yet (needs a GPU: 200 epochs of 390 steps). Reference target: 94.43% test
accuracy, kuangliu/pytorch-cifar's README for its MobileNetV2 (same strides; its blocks use
ReLU rather than ReLU6 and a 1x1 projection shortcut where the channels change, so a gap of a
few tenths is expected either way).
"""

from cnn_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset.name = "cifar10"
    config.dataset.data_dir = ""
    config.model.name = "mobilenet_v2_cifar"
    config.num_epochs = 200
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.train_transforms = "random_crop(padding=4)|hflip|normalize"
    config.eval_transforms = "normalize"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 4e-5
    config.schedule.name = "cosine"
    return config
