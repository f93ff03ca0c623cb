"""DeepLabV3-ResNet50 (torchvision's layout, output stride 8) on Oxford-IIIT Pet's trimaps
(background / pet, the border ignored): a GPU recipe, not run in this repository yet.

Command (oxford_iiit_pet prepared once in the array_record format, see
cnn_jax/data/segmentation_tfds.py):
    python -m experiments.train --config experiments/configs/deeplabv3_pets.py \
        --workdir runs/deeplabv3_pets
An ImageNet backbone (strongly advised: from scratch it needs far longer) through
config.transfer.init_from, as for the classifiers (README "Transfer learning").

Recipe as torchvision's references/segmentation (SGD, momentum 0.9, weight decay 1e-4,
polynomial decay ~ cosine here, random resized crops and flips; batch 8x4 there), at 224x224.
Result: not measured yet (written without a GPU).
Reference target: no published figure for this exact setup; torchvision reports mean IoU 66.4
for DeepLabV3-ResNet50 on its 21-class COCO-with-VOC-labels validation set, and the two-class
pet/background task is easier: expect a mean IoU above 0.85.
"""

from cnn_jax.config import default_config


def get_config(head: str = "deeplabv3"):
    config = default_config()
    config.task = "segmentation"
    config.dataset.name = "oxford_iiit_pet_seg"
    config.dataset.image_size = 256
    config.model.name = f"{head}_resnet50"
    config.model.dtype = "bfloat16"
    config.num_epochs = 30
    config.batch_size = 32
    config.eval_batch_size = 64
    config.train_transforms = "random_resized_crop(224, scale=(0.5, 1.0))|hflip|normalize"
    config.eval_transforms = "center_crop(224)|normalize"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.02
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1.0
    config.checkpoint.best_metric = "test_mean_iou"
    return config
