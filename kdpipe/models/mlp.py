"""A two-hidden-layer ReLU MLP on flattened inputs; hidden size 256 * width."""
from collections import OrderedDict
import math

from torch import nn

from kdpipe.models import scaled

HIDDEN = 256


def build(input_shape: tuple, num_classes: int, width: float) -> nn.Sequential:
    hidden = scaled(HIDDEN, width)
    return nn.Sequential(OrderedDict(
        stem=nn.Flatten(),
        stage1=nn.Sequential(nn.Linear(math.prod(input_shape), hidden), nn.ReLU()),
        stage2=nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()),
        head=nn.Linear(hidden, num_classes),
    ))
