"""A CNN on your own images, sized for a CPU: a ResNet-18 (CIFAR stem) at a quarter width,
on 32x32 images. The same recipe at full width and 64 px is `image_folder_gpu.py`.

Layout: `root/<class_name>/**/<image>`, the layout of torchvision's ImageFolder (or
`root/train/<class_name>/...`, `root/test/...` and optionally `root/validation/...`). With one
folder, each class is split into train/test by `test_fraction` (stratified, fixed by
`split_seed`, independent of the run's seed). Every file is decoded once up front (all bad
files named in one error); images are resized (shorter side) and center-cropped to
`image_size` and, with `cache='auto'` (the default), kept decoded in memory, so no file is
decoded again during training.

Command:
    python -m experiments.train --config experiments/configs/image_folder.py \
        --workdir runs/my_images --config.dataset.root=path/to/images

Result: depends on your images. As a check, the digit photos of
`python benchmarks/image_folder_cache.py --digit_photos /tmp/digit_photos` (1,797 96x96 colour
JPEGs, 10 classes, digits in random colours, sizes and places on cluttered backgrounds; 1,438
train / 359 test) reach RESULT test accuracy after 30 epochs in WALL wall on 2 CPU cores
(`--config.dataset.root=/tmp/digit_photos`).
"""

from cnn_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset.name = "image_folder"
    config.dataset.root = ""          # required: the folder holding one sub-folder per class
    config.dataset.image_size = 32
    config.dataset.channels = 3       # 1: grayscale; 4: RGBA (alpha kept, not composited)
    config.dataset.test_fraction = 0.2
    config.dataset.split_seed = 0
    config.dataset.exif_transpose = True  # turn photos as their EXIF orientation says
    config.dataset.background = "white"   # what transparent pixels are composited on
    config.dataset.cache = "auto"     # decoded images: auto (memory to 2 GiB), memory, disk, none
    config.dataset.cache_dir = ""     # '' -> $CNN_JAX_CACHE_DIR or ~/.cache/cnn_jax
    config.model.name = "resnet18_cifar"  # any model that takes image_size x image_size inputs
    config.model.width = 16           # a quarter of ResNet-18's 64: about 16x fewer FLOPs
    config.num_epochs = 30
    config.batch_size = 64
    config.train_transforms = "random_crop(padding=4)|hflip|normalize"
    config.eval_transforms = "normalize"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    return config
