"""A small CNN for small images: two 3x3 conv blocks (32 and 64 channels * width), global
average pooling and a linear head. Works for any input of at least 4x4 pixels."""
from collections import OrderedDict

from torch import nn

from kdpipe.models import scaled


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
    )


def build(input_shape: tuple, num_classes: int, width: float) -> nn.Sequential:
    channels, _, _ = input_shape
    c1, c2 = scaled(32, width), scaled(64, width)
    return nn.Sequential(OrderedDict(
        stage1=conv_block(channels, c1),
        stage2=conv_block(c1, c2),
        head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, num_classes)),
    ))
