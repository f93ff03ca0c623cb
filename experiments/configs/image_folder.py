"""A CNN on your own images, sized for a CPU: LeNet-5 (ReLU, max pooling) on 32x32 colour
images, which trains in minutes on 2 cores. The larger recipe, ResNet-18 at 64x64, is
`image_folder_gpu.py`.

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

Result: depends on your images. As checks, on 2 CPU cores shared with other work (load
average about 18: an identical earlier run used 35 s of CPU time in 320 s of wall time, so an
idle machine is faster), 30 epochs, 1,438 train / 359 test images (measured before runs carved a
validation split from train; now 1,293 train / 145 validation) written by
`benchmarks/image_folder_cache.py`:
  - `--digit_pngs /tmp/digit_pngs` (the 1,797 digits as grey 32x32 PNGs):
    97.21% test accuracy (macro-F1 0.972), 356 s wall;
  - `--digit_photos /tmp/digit_photos` (the digits as 96x96 colour JPEGs, in random tints,
    sizes and places on uneven backgrounds): 71.87% (macro-F1 0.714), 302 s wall.
On the same two sets a quarter-width ResNet-18 (CIFAR stem, `width=16`) at 32 px ran at
8-41 images/s (LeNet-5: 200-1,900): 96.66% on the digit PNGs in 2,307 s wall, and it had not
learned the digit photos after 13 epochs (12% test), so LeNet-5 is the CPU recipe.
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
    config.model.name = "lenet5"      # any model that takes image_size x image_size inputs
    config.model.act = "relu"
    config.model.pool = "max"
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
