"""ConvNeXt-Tiny (1x1 patch stem for 32x32 images) on CIFAR-10 through TFDS, with the modern
recipe (Liu et al. 2022's, scaled to CIFAR): AdamW, linear warm-up then cosine, label smoothing
0.1, stochastic depth 0.1, TrivialAugment, random crops and flips, mixup 0.8, and an exponential
moving average of the weights (decay 0.9999) evaluated beside the raw weights; the checkpoint
kept as best is the one whose averaged weights do best on validation.
A GPU recipe: 28M parameters at full resolution are days on a CPU.

Prepare once (TFDS's builder downloads it and needs TensorFlow: pip install "cnn_jax[prepare]"):
    python -m cnn_jax.data.prepare cifar10
Command:
    python -m experiments.train --config experiments/configs/convnext_tiny_cifar10.py \
        --workdir runs/convnext_tiny_cifar10 [--config.dataset.data_dir=DIR]

Result: not run yet (needs a GPU). Reference target: about 90% test accuracy for a ConvNeXt-T
trained from scratch on CIFAR-10 for 200 epochs with this kind of recipe; without pretraining
ConvNeXt trails a CIFAR ResNet-18 (95%, experiments/configs/resnet18_cifar10.py), since its
inductive biases are weaker and CIFAR-10 is small.
"""

from cnn_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset.name = "cifar10"
    config.dataset.data_dir = ""
    config.model.name = "convnext_tiny_cifar"
    config.model.stochastic_depth_rate = 0.1
    config.num_epochs = 200
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.label_smoothing = 0.1
    config.train_transforms = ("trivial_augment|random_crop(padding=4)|hflip|normalize|"
                              "mixup(alpha=0.8)")
    config.eval_transforms = "normalize"
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.05
    config.optimizer.grad_clip_norm = 5.0
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 5.0
    config.ema.decay = 0.9999
    config.checkpoint.best_metric = "val_ema_accuracy"
    return config
