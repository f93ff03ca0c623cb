"""A CNN on your own images, sized for a GPU: ResNet-18 (CIFAR stem) at 64x64, otherwise the
recipe of `image_folder.py` (this project's image-folder recipe before it became LeNet-5 at
32 px for CPUs); the data options are the same (see its docstring).

Command:
    python -m experiments.train --config experiments/configs/image_folder_gpu.py \
        --workdir runs/my_images_gpu --config.dataset.root=path/to/images

Result: depends on your images; not run on a GPU yet. Target time: a few minutes on one
current GPU for a set of a few thousand images (ResNet-18-CIFAR at 64 px is about 2.2 G
multiply-adds per image forward, so 30 epochs of 1,300 training images, forward and
backward, are about 5e14 FLOPs: under a minute of compute at a few tens of TFLOP/s; the
rest is start-up and compilation). On 2 CPU cores this recipe ran at 7.3 images/s: 110
minutes for 1,651 images (issue 13's measurement; with `image_size=32` it reached 98.5% on
a real hand-sign set in 34 minutes); use `image_folder.py` there.
"""

from experiments.configs import image_folder


def get_config():
    config = image_folder.get_config()
    config.dataset.image_size = 64
    config.model.name = "resnet18_cifar"
    del config.model["act"], config.model["pool"]  # LeNet's options
    return config
