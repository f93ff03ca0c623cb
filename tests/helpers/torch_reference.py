"""Shared set-up of torchvision's own models as test references."""


def randomize_batch_norm_(model, torch, seed=0, batches_tracked=None):
    """Random BatchNorm affine parameters and running statistics, in place: a fresh BatchNorm
    is the identity in eval mode (mean 0, var 1, scale 1, bias 0), which would hide a mapping
    error. The convolution and linear weights keep torchvision's own random initialization.
    `batches_tracked`: also set every `num_batches_tracked` to it (a key cnn_jax ignores)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                if batches_tracked is not None:
                    module.num_batches_tracked.fill_(batches_tracked)
    return model
