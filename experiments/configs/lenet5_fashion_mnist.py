"""LeNet-5 on Fashion-MNIST through TFDS (`tfds.data_source` + grain, no TensorFlow).

Prepare once, from the four original .gz files of https://github.com/zalandoresearch/fashion-mnist
in one folder (no network and no TensorFlow needed):
    python -m cnn_jax.data.prepare fashion_mnist --manual_dir path/to/fashion_mnist_gz_files
Command:
    python -m experiments.train --config experiments/configs/lenet5_fashion_mnist.py \
        --workdir runs/lenet5_fashion_mnist [--config.dataset.data_dir=DIR]

Result: not run yet (the Fashion-MNIST files are not available offline here). Reference
target: about 91% test accuracy after 15 epochs (LeNet-style CNNs score 89-91% in Zalando's
benchmark); expect a few minutes on 2 CPU cores, as the MNIST config runs 2 epochs in ~1 min.
"""

from cnn_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset.name = "fashion_mnist"
    config.dataset.data_dir = ""  # empty: TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
    config.model.name = "lenet5"
    config.model.act = "relu"
    config.model.pool = "max"
    config.num_epochs = 15
    config.batch_size = 64
    config.eval_batch_size = 1000
    config.train_transforms = "pad(2)|random_crop(padding=2)|hflip|normalize"
    config.eval_transforms = "pad(2)|normalize"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    return config
