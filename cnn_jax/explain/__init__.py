"""Explainability: what a trained CNN computes and which pixels its predictions depend on.

Works on any registered model and any named layer, with no change to the model (Flax's
method interception sees every submodule). Functions take the model, its variables
({'params': ..., 'batch_stats': ...}), a batch of images (N, H, W, C) as the model takes them
(after the run's eval transforms), and an explicit PRNG key where they draw noise.

| function | gives |
| --- | --- |
| `list_layers` | every layer: name ('C3', 'layer4_1', 'conv5/conv'), kind, output shape |
| `activations`, `activation_grid` | a layer's feature maps, as arrays and as a grid image |
| `first_conv_kernel`, `filter_grid` | the first convolution's kernels, as a grid image |
| `activation_stats` | per layer: mean, std, fraction of zeros, fraction of dead ReLUs |
| `saliency`, `smoothgrad`, `input_gradients` | gradients of the target logit w.r.t. the pixels |
| `grad_cam` | Grad-CAM on any spatial layer, upsampled to the image |
| `integrated_gradients` | attributions from a baseline, with a step count |
| `occlusion` | the target logit's drop when a sliding patch hides each pixel |
| `explain(method, ...)`, `METHODS` | any of the above as one (N, H, W) map per image, by name |
| `overlay`, `save_png` | a heat map over the image, written as PNG |
| `top_fraction_in_region`, `rank_correlation` | sanity checks of maps (localization, randomization) |
"""

from cnn_jax.explain.attribution import (METHODS, attribution_map, default_cam_layer, explain,
                                         grad_cam, input_gradients, integrated_gradients,
                                         occlusion, saliency, smoothgrad)
from cnn_jax.explain.capture import Layer, forward, layer_gradient, list_layers
from cnn_jax.explain.features import (activation_layers, activation_stats, activations,
                                      first_conv_kernel)
from cnn_jax.explain.plot import (activation_grid, colorize, enlarge, filter_grid, normalize,
                                  overlay, save_png, tile, to_rgb)
from cnn_jax.explain.sanity import rank_correlation, rankdata, top_fraction_in_region

__all__ = ["METHODS", "Layer", "activation_grid", "activation_layers", "activation_stats",
           "activations", "attribution_map", "colorize", "default_cam_layer", "enlarge",
           "explain", "filter_grid", "first_conv_kernel", "forward", "grad_cam",
           "input_gradients", "integrated_gradients", "layer_gradient", "list_layers",
           "normalize", "occlusion", "overlay", "rank_correlation", "rankdata", "saliency",
           "save_png", "smoothgrad", "tile", "to_rgb", "top_fraction_in_region"]
