"""ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition") for small images.

CIFAR stem as in the paper's CIFAR experiments and most CIFAR ResNet-18s: one 3x3 conv
(stride 1), no max-pool, so a 32x32 image reaches stage4 at 4x4. Four residual stages of two
basic blocks each, 64, 128, 256 and 512 channels * width; stages 2-4 halve the resolution in
their first block, whose shortcut is then a 1x1 conv with batch norm (option B). Global average
pooling and a linear head. At width 1 on CIFAR-10 it has 11,173,962 parameters.
"""
from collections import OrderedDict

from torch import nn

from kdpipe.models import scaled

CHANNELS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        return (self.residual(x) + self.shortcut(x)).relu()


def build(input_shape: tuple, num_classes: int, width: float) -> nn.Sequential:
    channels = input_shape[0]
    c1, c2, c3, c4 = (scaled(c, width) for c in CHANNELS)
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(channels, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1),
                           nn.ReLU()),
        stage1=nn.Sequential(BasicBlock(c1, c1, 1), BasicBlock(c1, c1, 1)),
        stage2=nn.Sequential(BasicBlock(c1, c2, 2), BasicBlock(c2, c2, 1)),
        stage3=nn.Sequential(BasicBlock(c2, c3, 2), BasicBlock(c3, c3, 1)),
        stage4=nn.Sequential(BasicBlock(c3, c4, 2), BasicBlock(c4, c4, 1)),
        head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c4, num_classes)),
    ))
