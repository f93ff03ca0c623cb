"""ResNet-50 (ImageNet stem) on Imagenette (10 easy ImageNet classes) at 128 px, through TFDS.

Images are read from 'imagenette/320px-v2', resized (shorter side) and center-cropped to 144 on
the host, then cropped on device: random-resized 128 crops + flips for training, the central
128 for testing (the 0.875 ratio of ImageNet's 224/256).
Prepare once (TFDS's builder downloads it and needs TensorFlow: pip install "cnn_jax[prepare]"):
    python -m cnn_jax.data.prepare imagenette
Command:
    python -m experiments.train --config experiments/configs/resnet50_imagenette.py \
        --workdir runs/resnet50_imagenette [--config.dataset.data_dir=DIR]

Result: not run yet (needs a GPU: 40 epochs of 9,469 images at 128 px). Reference target:
about 91-92% top-1 on the 3,925 validation images. Public from-scratch Imagenette runs report
90-93% (e.g. an SE-ResNeXt-50 at 192 px after 20 epochs: 93.4%; a ResNet-18 course project:
92.5%); this config has not yet been measured against them.
"""

from experiments.configs import resnet18_imagenette


def get_config():
    config = resnet18_imagenette.get_config()  # the same recipe, the deeper network
    config.model.name = "resnet50"
    return config
