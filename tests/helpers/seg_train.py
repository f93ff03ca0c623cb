"""`experiments.train` with a tiny segmentation model registered as "tiny_seg" (for tests that
need a fast segmentation run in a subprocess: kill -9 and resume).

    python tests/helpers/seg_train.py --config ... --workdir ...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from seg_net import TinySegNet  # noqa: E402

from cnn_jax.models import MODELS, ModelEntry  # noqa: E402
from experiments import train  # noqa: E402

MODELS["tiny_seg"] = ModelEntry(TinySegNet, (16, 16, 3))
train.check_override_keys(sys.argv[1:])
app.run(train.main)
