"""The benchmarked cnn_jax architectures written in PyTorch: the same layers, shapes and
parameter counts (tests/test_benchmarks.py compares the counts), for benchmarks/train_step.py.

    model = build("resnet18_cifar", num_classes=10)

LeNet-5 as cnn_jax.models.lenet (ReLU, max pooling, 61,706 parameters); ResNet-18 with the
CIFAR stem (one 3x3/1 convolution, no max pool) as cnn_jax.models.resnet; VGG-11 CIFAR as
cnn_jax.models.vgg (no BatchNorm, a 512-512-classes head with dropout 0.5 on the 1x1 map);
MobileNetV2 and ConvNeXt-Tiny (CIFAR variants) are torchvision's own modules with the stem
and strides cnn_jax's `_cifar` variants use.
U-Net as cnn_jax.models.unet (3x3 convolutions padded by 1, 2x2 stride-2 transposed
convolutions, the skip concatenated first, no BatchNorm; `width`, `depth`), logits
(N, classes, H, W).
Initialisation is PyTorch's default: it does not change the speed.
"""

import torch
from torch import nn

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class LeNet5(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 120, 5), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def conv_bn(in_channels, out_channels, kernel_size, stride, padding):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                   bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_channels, channels, stride):
        super().__init__()
        self.conv1 = conv_bn(in_channels, channels, 3, stride, 1)
        self.conv2 = conv_bn(channels, channels, 3, 1, 1)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = conv_bn(in_channels, channels, 1, stride, 0)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18Cifar(nn.Module):
    def __init__(self, num_classes=10, width=64):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, width, 3, 1, 1), nn.ReLU())
        blocks, channels = [], width
        for i in range(4):
            for j in range(2):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(channels, width * 2**i, stride))
                channels = width * 2**i
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class VGG11Cifar(nn.Module):
    def __init__(self, num_classes=10, hidden=512, dropout=0.5):
        super().__init__()
        layers, channels = [], 3
        for v in VGG11:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU()]
                channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)  # 32x32 in: already 1x1
        return self.classifier(torch.flatten(x, 1))


def double_conv(in_channels, out_channels):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, num_classes=2, width=64, depth=4, in_channels=1):
        super().__init__()
        channels = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(double_conv(c_in, c) for c_in, c in
                                  zip([in_channels, *channels[:-2]], channels[:-1]))
        self.bottom = double_conv(channels[-2], channels[-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * c, c, 2, stride=2)
                                for c in reversed(channels[:-1]))
        self.up_convs = nn.ModuleList(double_conv(2 * c, c) for c in reversed(channels[:-1]))
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, block, skip in zip(self.up, self.up_convs, reversed(skips)):
            x = block(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


def mobilenet_v2_cifar(num_classes=10):
    """torchvision's MobileNetV2 with cnn_jax's `mobilenet_v2_cifar` strides: 1 in the stem and
    in the second stage (kuangliu/pytorch-cifar's CIFAR variant)."""
    import torchvision

    model = torchvision.models.mobilenet_v2(num_classes=num_classes)
    model.features[0][0].stride = (1, 1)
    model.features[2].conv[1][0].stride = (1, 1)  # the second stage's first depthwise 3x3
    return model


def convnext_tiny_cifar(num_classes=10):
    """torchvision's ConvNeXt-Tiny with cnn_jax's `convnext_tiny_cifar` stem: a 1x1 patch
    (stride 1) instead of 4x4."""
    import torchvision

    model = torchvision.models.convnext_tiny(num_classes=num_classes)
    model.features[0][0] = nn.Conv2d(3, 96, kernel_size=1, stride=1)
    return model


MODELS = {"lenet5": LeNet5, "resnet18_cifar": ResNet18Cifar, "vgg11_cifar": VGG11Cifar,
          "unet": UNet, "mobilenet_v2_cifar": mobilenet_v2_cifar,
          "convnext_tiny_cifar": convnext_tiny_cifar}


def build(name, num_classes=10, **options):
    """The PyTorch twin of cnn_jax's `get_model(name, num_classes=..., **options)`; the
    options are ResNet's `width` and U-Net's `width`, `depth` and `in_channels`."""
    if name not in MODELS:
        raise ValueError(f"No PyTorch model {name!r}. Valid choices: {', '.join(sorted(MODELS))}.")
    return MODELS[name](num_classes=num_classes, **options)
