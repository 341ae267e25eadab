"""M5, the 5-layer 1-D CNN on raw waveforms of Dai et al. 2017 ("Very Deep Convolutional Neural
Networks for Raw Waveforms", Table 1). Input: 16 kHz waveforms [B, 1, samples].

A first conv of 80-sample kernels at stride 4 (128 channels), then three 3-sample convs (128,
256, 512 channels), each conv followed by batch norm, ReLU and a 4x max-pool; global average
pooling over time and a linear head. Channels are scaled by width. The kernel sizes are the
paper's, in samples: at our 16 kHz (the paper used 8 kHz) the first kernel spans 5 ms instead
of 10 ms. Needs at least 1,100 samples.
"""
from collections import OrderedDict

from torch import nn

from kdpipe.models import scaled

CHANNELS = (128, 128, 256, 512)


def conv_block(c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    # kernel-3 convs keep the length ("same" padding); the strided first conv does not pad
    padding = kernel_size // 2 if stride == 1 else 0
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
        nn.BatchNorm1d(c_out), nn.ReLU(), nn.MaxPool1d(4),
    )


class TimeMean(nn.Module):
    """[B, C, T] -> [B, C]."""

    def forward(self, x):
        return x.mean(dim=-1)


def build(input_shape: tuple, num_classes: int, width: float) -> nn.Sequential:
    channels = input_shape[0]
    c1, c2, c3, c4 = (scaled(c, width) for c in CHANNELS)
    return nn.Sequential(OrderedDict(
        stem=conv_block(channels, c1, 80, stride=4),
        stage1=conv_block(c1, c2, 3),
        stage2=conv_block(c2, c3, 3),
        stage3=conv_block(c3, c4, 3),
        head=nn.Sequential(TimeMean(), nn.Linear(c4, num_classes)),
    ))
