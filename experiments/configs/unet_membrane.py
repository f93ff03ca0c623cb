"""U-Net on the ISBI 2012 EM membrane images, CPU-sized.

Command (from the repository root; the data at ../shared/data/membrane, see SOURCES.md):
    python -m experiments.train --config experiments/configs/unet_membrane.py \
        --workdir runs/unet_membrane

Split: slices 0-23 train, 24-29 held out as 'test' (the challenge's own test labels are not
public). Training sees U-Net's elastic deformation of the 512x512 slices (a 3x3 grid of
N(0, 10^2)-pixel displacements), then random 128x128 crops, flipped both ways, each slice 8
times an epoch; evaluation runs on the six whole 512x512 held-out slices.
U-Net at width 16 (16-256 channels, 1/16 of the classic layout), BatchNorm, Adam.

Result: after 12 epochs (288 steps), on the 6 held-out slices, pixel accuracy 0.9206 (pixel error
0.0794), mean IoU 0.7821, mean Dice 0.8723, frequency-weighted IoU 0.8575; 425 s wall on the 2
CPU cores shared with other jobs (load average 4-6); 1,942,306 parameters. Below the 0.94 the
issue aimed at, and not for lack of training or width (the same split; each the command above
plus the overrides shown):
- without elastic (--config.train_transforms="random_crop(128)|hflip|vflip|normalize"),
  --config.num_epochs=6: 0.9195; =12: 0.9213 (both measured in session 12);
- --config.num_epochs=60 (stopped at epoch 26, the learning rate still 60% of its peak): 0.9217;
  the 12-epoch run's accuracy on the whole training slices
  (python -m experiments.evaluate runs/unet_membrane --split train), 0.9138: it does not overfit;
- without elastic, --config.model.width=32 --config.optimizer.learning_rate=1e-3
  --config.num_epochs=20 (7.8M parameters), after 11 of the 20 epochs: 0.9188.
A one-off analysis script (not shipped) found 75% of the held-out errors within 1 pixel of a
label boundary (88% within 3), and averaging the 8 flips and rotations at test time moved the
accuracy from 0.9206 to 0.9226 only: the predicted membranes are where the labels are, their
edges jitter by a pixel (the labelled bands are about 8 pixels wide). The challenge's
organizers found its scoring "not sufficiently robust to variations in the widths of neurite
borders" (Arganda-Carreras et al. 2015), and its "pixel error" (U-Net's 0.0611; Ronneberger et
al. 2015, Table 1) is 1 - the maximal F-score of pixel similarity over thresholds of a boundary
map, not 1 - this argmax pixel accuracy, so the two
figures are not directly comparable. zhixuhao/unet's "about 0.97" is its training accuracy.
"""

from cnn_jax.config import default_config


def get_config():
    config = default_config()
    config.task = "segmentation"
    config.dataset.name = "membrane"
    config.dataset.root = "../shared/data/membrane"
    config.dataset.train_repeats = 8
    config.model.name = "unet"
    config.model.width = 16
    config.model.norm = "batch"
    config.model.upsample = "transpose"
    config.num_epochs = 12
    config.batch_size = 8
    config.eval_batch_size = 6
    config.train_transforms = "elastic(grid=3, sigma=10.0)|random_crop(128)|hflip|vflip|normalize"
    config.eval_transforms = "normalize"
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 2e-3
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1.0
    config.log_every_steps = 12
    # 24 slices are too few to hold some out for selection as well: no validation split, nothing
    # selected (the last state is the result), the held-out slices evaluated every epoch.
    config.validation_fraction = 0.0
    config.checkpoint.best_metric = ""
    config.eval_test_every_epoch = True
    return config
