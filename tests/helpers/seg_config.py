"""A tiny segmentation config for tests: "tiny_seg" (tests/helpers/seg_train.py registers it) on
a segmentation folder given by --config.dataset.root."""

from cnn_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset = {"name": "segmentation_folder", "root": ""}
    config.model = {"name": "tiny_seg", "dtype": "float32", "width": 8}
    config.num_epochs, config.batch_size, config.eval_batch_size = 3, 4, 4
    config.optimizer.name, config.optimizer.learning_rate = "adam", 0.02
    config.train_transforms = "hflip|random_crop(padding=2)|normalize"
    config.eval_transforms = "normalize"
    config.checkpoint.best_metric = "val_mean_iou"
    return config
