"""VGG-19 with batch norm (Simonyan & Zisserman 2015, configuration E; batch norm after every
conv as in torchvision's vgg19_bn) with the CIFAR-size classifier: one linear layer on the
512 * width pooled channels instead of ImageNet's three 4096-unit layers.

Five stages of 3x3 conv-BN-ReLU layers (2, 2, 4, 4, 4 convs of 64, 128, 256, 512, 512
channels * width), each ending in a 2x2 max-pool, so inputs need at least 32x32 pixels; a
32x32 image leaves stage5 at 1x1, a larger one is averaged to 1x1 before the head.
"""
from collections import OrderedDict

from torch import nn

from kdpipe.models import scaled

# (conv layers, channels at width 1) per stage
STAGES = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))


def conv_stage(c_in: int, c_out: int, convs: int) -> nn.Sequential:
    layers = []
    for i in range(convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1),
                   nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


def build(input_shape: tuple, num_classes: int, width: float) -> nn.Sequential:
    c_in = input_shape[0]
    stages = OrderedDict()
    for k, (convs, channels) in enumerate(STAGES, start=1):
        c_out = scaled(channels, width)
        stages[f"stage{k}"] = conv_stage(c_in, c_out, convs)
        c_in = c_out
    stages["head"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(c_in, num_classes))
    return nn.Sequential(stages)
