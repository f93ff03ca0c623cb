"""FCN-ResNet50 (torchvision's layout) on Oxford-IIIT Pet's trimaps: the DeepLabV3 recipe
(experiments/configs/deeplabv3_pets.py) with the FCN head. A GPU recipe, not run here yet.

    python -m experiments.train --config experiments/configs/fcn_pets.py --workdir runs/fcn_pets

Result: not measured yet (written without a GPU).
Reference target: torchvision reports mean IoU 60.5 for FCN-ResNet50 on its 21-class
COCO-with-VOC-labels validation set; on the two-class pet task expect a mean IoU above 0.8.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "deeplabv3_pets", os.path.join(os.path.dirname(os.path.abspath(__file__)), "deeplabv3_pets.py"))
_deeplab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_deeplab)


def get_config():
    return _deeplab.get_config(head="fcn")
