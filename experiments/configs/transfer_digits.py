"""Transfer to another dataset with few labels: LeNet-5 pretrained on MNIST, then trained on
the embedded digits (scikit-learn's 8x8 digits, another collection, upsampled) with 10 labels
per class (100 images), against training from scratch on those 100.

The arm is the config's parameter (`transfer_digits.py:<arm>`, default `scratch`):

| arm | what |
| --- | --- |
| pretrain | MNIST, all 60,000 training images: `lenet5_mnist.py` (the source model) |
| scratch | digits, 10 per class, random initialization |
| finetune | every layer initialized from `pretrain` but the head (re-initialized) |
| finetune_lr | as finetune, the backbone at 0.1x the learning rate |
| frozen | as finetune, the backbone frozen: only the head trains |
| gradual | as finetune, the backbone frozen for the first 100 of the 300 steps |

Digits are resized to 24x24 and padded to 32x32 (MNIST's framing: a digit inside a black
margin) and normalized with MNIST's statistics, in every arm. Every arm shares the optimizer
(SGD, Nesterov momentum, learning rate 0.02 with a cosine schedule, weight decay 5e-4) and
60 epochs of 5 steps of 20; the learning rate was the best of {0.05, 0.02, 0.005} for both
scratch and fine-tuning on the digits' other training images (a validation set), not on the
test split. So no validation split is carved here (`validation_fraction=0`): every labeled image
trains, and each arm's figure is its last epoch's test accuracy, nothing selected on it.

Command (pretraining needs MNIST prepared, see lenet5_mnist.py; `experiments/transfer.py`
runs every arm over five label draws and adds a linear probe):
    python -m experiments.transfer --settings digits --data_dir DIR
One arm, once the pretraining run's variables exist:
    python -m experiments.train --config experiments/configs/transfer_digits.py:finetune \
        --workdir runs/transfer/digits/finetune --config.transfer.init_from=runs/transfer/digits/pretrain

Result: test accuracy on the 360 test digits, mean ± std of 5 label draws: from scratch
86.89 ± 1.72%, fine-tune 91.39 ± 2.23% (ahead in 4 draws, level in 1), gradual 91.78 ± 1.73%,
backbone at 0.1x 90.67 ± 1.56%, frozen backbone 87.67 ± 0.67%, linear probe 85.72 ± 0.87%
(pretraining: 99.02% on MNIST's test split).
"""
from cnn_jax.config import default_config
from experiments.configs import lenet5_mnist

ARMS = ("pretrain", "scratch", "finetune", "finetune_lr", "frozen", "gradual")
PRETRAIN_DIR = "runs/transfer/digits/pretrain"


def set_arm(config, arm: str, pretrain_dir: str, unfreeze_after: int):
    """The transfer settings that make `arm` (shared with transfer_mnist_5to9.py)."""
    if arm not in ARMS:
        raise ValueError(f"Unknown arm {arm!r}. Valid choices: {', '.join(ARMS)}.")
    if arm not in ("pretrain", "scratch"):
        config.transfer.init_from = pretrain_dir
    if arm == "finetune_lr":
        config.transfer.lr_multipliers = "backbone=0.1"
    if arm in ("frozen", "gradual"):
        config.transfer.freeze = "backbone"
    if arm == "gradual":
        config.transfer.unfreeze_after_steps = unfreeze_after
    return config


def get_config(arm: str = "scratch"):
    if arm == "pretrain":
        config = lenet5_mnist.get_config()
        config.validation_fraction = 0.0  # all 60,000 train, as the results were measured
        return config
    config = default_config()
    config.validation_fraction = 0.0  # the labeled images all train; nothing selected on test
    config.dataset.name = "subset"
    config.dataset.base = "digits"
    config.dataset.image_size = 24
    config.dataset.train_per_class = 10
    config.dataset.subset_seed = 0  # which 10 images per class: the label draw
    config.model.name = "lenet5"
    config.train_transforms = "pad(4)|normalize(mean=(0.1307,), std=(0.3081,))"
    config.eval_transforms = config.train_transforms
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.02
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    config.num_epochs = 60
    config.batch_size = 20
    return set_arm(config, arm, PRETRAIN_DIR, unfreeze_after=100)
