"""ResNet-18 with the CIFAR stem (3x3 conv, no max-pool) on CIFAR-10 through TFDS.

Prepare once (TFDS's builder downloads it and needs TensorFlow: pip install "cnn_jax[prepare]"):
    python -m cnn_jax.data.prepare cifar10
Command:
    python -m experiments.train --config experiments/configs/resnet18_cifar10.py \
        --workdir runs/resnet18_cifar10 [--config.dataset.data_dir=DIR]

Result: not run yet (needs a GPU: 200 epochs of 390 steps). Reference target: about 95% test
accuracy, as this standard recipe (SGD 0.1, Nesterov momentum, weight decay 5e-4, cosine, crop +
flip, 200 epochs) reaches in public PyTorch reproductions (kuangliu/pytorch-cifar lists 93.0%
for ResNet-18 with a step schedule, 95%+ with cosine).
"""

from cnn_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset.name = "cifar10"
    config.dataset.data_dir = ""  # empty: TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
    config.model.name = "resnet18_cifar"
    config.num_epochs = 200
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.train_transforms = "random_crop(padding=4)|hflip|normalize"
    config.eval_transforms = "normalize"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    return config
