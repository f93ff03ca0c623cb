"""Transfer between classes with few labels: LeNet-5 pretrained on MNIST digits 0-4, then
trained on digits 5-9 with 100 labels per class (500 images), against training from scratch.

The arm is the config's parameter (`transfer_mnist_5to9.py:<arm>`, default `pretrain`), as in
transfer_digits.py: pretrain (digits 0-4, all 30,596 training images, 2 epochs), scratch,
finetune, finetune_lr, frozen, gradual (backbone frozen for the first 100 of 400 steps).
Every arm but pretrain: SGD with Nesterov momentum, learning rate 0.02, cosine schedule,
weight decay 5e-4, 40 epochs of 10 steps of 50. No validation split is carved
(`validation_fraction=0`): every labeled image trains, and each arm's figure is its last
epoch's test accuracy, nothing selected on it.

Command (MNIST prepared, see lenet5_mnist.py; `experiments/transfer.py` runs every arm over
five label draws and adds a linear probe):
    python -m experiments.transfer --settings mnist_5to9 --data_dir DIR
One arm, once the pretraining run's variables exist:
    python -m experiments.train --config experiments/configs/transfer_mnist_5to9.py:finetune \
        --workdir runs/transfer/mnist_5to9/finetune --config.dataset.data_dir=DIR \
        --config.transfer.init_from=runs/transfer/mnist_5to9/pretrain

Result: test accuracy on the 4,861 test images of digits 5-9, mean ± std of 5 label draws:
from scratch 95.50 ± 0.18%, fine-tune 94.63 ± 0.58%, gradual 94.50 ± 0.42%, backbone at 0.1x
92.13 ± 0.51%, frozen backbone 73.22 ± 0.25%, linear probe 74.89 ± 0.41% (pretraining: 99.20%
on the test images of 0-4). Pretraining does not help here: LeNet-5's features of digits 0-4
serve 5-9 worse than a random network's (a linear probe on them is less accurate), and
fine-tuning ends level with or below training from scratch.
"""
from cnn_jax.config import default_config
from experiments.configs.transfer_digits import ARMS, set_arm

__all__ = ["ARMS", "get_config"]
PRETRAIN_DIR = "runs/transfer/mnist_5to9/pretrain"


def get_config(arm: str = "pretrain"):
    config = default_config()
    config.validation_fraction = 0.0  # the labeled images all train; nothing selected on test
    config.dataset.name = "subset"
    config.dataset.base = "mnist"
    config.dataset.data_dir = ""  # empty: TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
    config.dataset.classes = "0-4" if arm == "pretrain" else "5-9"
    config.dataset.train_per_class = 0 if arm == "pretrain" else 100
    config.dataset.subset_seed = 0
    config.model.name = "lenet5"
    config.train_transforms = "pad(2)|normalize"
    config.eval_transforms = "pad(2)|normalize"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05 if arm == "pretrain" else 0.02
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    config.eval_batch_size = 1000
    config.num_epochs = 2 if arm == "pretrain" else 40
    config.batch_size = 64 if arm == "pretrain" else 50
    return set_arm(config, arm, PRETRAIN_DIR, unfreeze_after=100)
