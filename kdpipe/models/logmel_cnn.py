"""A 2-D CNN on log-mel spectrograms [B, 1, n_mels, frames], after the CNN10 of PANNs (Kong et
al. 2020, "PANNs: Large-Scale Pretrained Audio Neural Networks for Audio Pattern Recognition").

Four stages of two 3x3 conv-BN-ReLU layers and a 2x2 average pool, 64, 128, 256 and 512
channels * width; global average pooling over frequency and time and a linear head. Unlike
CNN10: no input batch norm over mel bands, no 512-unit hidden layer, no dropout, and plain
average pooling instead of max + mean over time. Needs at least 16 mel bands and 16 frames.
"""
from collections import OrderedDict

from torch import nn

from kdpipe.models import scaled

CHANNELS = (64, 128, 256, 512)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.AvgPool2d(2),
    )


def build(input_shape: tuple, num_classes: int, width: float) -> nn.Sequential:
    c_in = input_shape[0]
    stages = OrderedDict()
    for k, channels in enumerate(CHANNELS, start=1):
        c_out = scaled(channels, width)
        stages[f"stage{k}"] = conv_block(c_in, c_out)
        c_in = c_out
    stages["head"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(c_in, num_classes))
    return nn.Sequential(stages)
