"""LeNet-5 on the embedded 8x8 digits (scikit-learn's copy, resized to 32x32). No network needed.

Command:
    python -m experiments.train --config experiments/configs/lenet5_digits.py \
        --workdir runs/lenet5_digits

Result: after 20 epochs on 1,292 training images (145 carved out for validation, stratified,
validation_seed 0), 99.31% validation accuracy (145 images) and 98.61% test accuracy (360
images, macro-F1 0.986) at the last epoch; the checkpoint best on validation (epoch 17) is at
98.61% test accuracy too. Seeds 0-3 (--config.seed=N): 98.61, 98.61, 98.61, 98.89% test.
24 to 64 s of training and evaluation, 61 to 134 s wall (two runs), on 2 CPU cores shared with
other jobs (load average ~20).
The README's Quick start states the same figures; tests/test_validation.py checks them.
"""

from cnn_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset.name = "digits"
    config.model.name = "lenet5"
    config.model.act = "relu"
    config.model.pool = "max"
    config.num_epochs = 20
    config.batch_size = 32
    config.train_transforms = "random_crop(padding=2)"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    return config
