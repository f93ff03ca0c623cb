"""MobileNetV2 (the CIFAR variant: strides 1 in the stem and the second stage) on the embedded
8x8 digits resized to 32x32, with the modern recipe's pieces that fit a 2-core CPU run: AdamW
with a linear warm-up and cosine decay, label smoothing, random crops. No network needed.

Command:
    python -m experiments.train --config experiments/configs/mobilenet_v2_digits.py \
        --workdir runs/mobilenet_v2_digits

Result: RESULT
"""

from cnn_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset.name = "digits"
    config.model.name = "mobilenet_v2_cifar"
    config.model.width_mult = 0.5
    config.num_epochs = 15
    config.batch_size = 64
    config.train_transforms = "random_crop(padding=2)"
    config.label_smoothing = 0.1
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.weight_decay = 0.05
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1.0
    return config
