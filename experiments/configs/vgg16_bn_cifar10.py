"""VGG-16 with BatchNorm, CIFAR head (1x1 pooled features, 512-wide classifier), on CIFAR-10.

Prepare once (TFDS's builder downloads it and needs TensorFlow: pip install "cnn_jax[prepare]"):
    python -m cnn_jax.data.prepare cifar10
Command:
    python -m experiments.train --config experiments/configs/vgg16_bn_cifar10.py \
        --workdir runs/vgg16_bn_cifar10 [--config.dataset.data_dir=DIR]

Result: not run yet (needs a GPU: 200 epochs). Reference target: about 93.5-94% test accuracy
(kuangliu/pytorch-cifar lists 92.6% for VGG-16 with a step schedule; cosine adds about a point).
"""

from cnn_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset.name = "cifar10"
    config.dataset.data_dir = ""  # empty: TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
    config.model.name = "vgg16_bn_cifar"
    config.num_epochs = 200
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.train_transforms = "random_crop(padding=4)|hflip|normalize"
    config.eval_transforms = "normalize"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    return config
