"""Architectures: a registry of builders, each taking a width multiplier.

Every architecture module exposes ``build(input_shape, num_classes, width) -> nn.Module``. A model
is an ``nn.Sequential`` of named stages (``model.stem``, ``model.stage1``, ..., ``model.head``)
so that a hook or a feature-matching loss can address a stage by name.

Weights are always drawn from an explicit ``torch.Generator`` (``init_parameters``), never from
torch's global RNG, so that two models built in one process cannot disturb each other.
"""
from __future__ import annotations

import importlib
import math

ARCHS = {
    "mlp": "kdpipe.models.mlp",
    "cnn": "kdpipe.models.cnn",
    "resnet18": "kdpipe.models.resnet",
    "vgg19": "kdpipe.models.vgg",
    "vit": "kdpipe.models.vit",
    "m5": "kdpipe.models.m5",
    "logmel_cnn": "kdpipe.models.logmel_cnn",
    "char_lstm": "kdpipe.models.lstm",
    "char_gpt": "kdpipe.models.gpt",
}


def scaled(channels: int, width: float) -> int:
    """A layer size times the width multiplier, at least 1."""
    return max(1, round(channels * width))


def build(arch: str, input_shape: tuple, num_classes: int, width: float):
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return importlib.import_module(ARCHS[arch]).build(tuple(input_shape), num_classes, width)


def parameter_count(arch: str, input_shape: tuple, num_classes: int, width: float = 1.0) -> int:
    """The number of trainable scalars of ``build(arch, ...)``, built on the meta device (no
    memory, no initialisation), so that it is cheap even for the largest architecture."""
    import torch

    with torch.device("meta"):
        model = build(arch, input_shape, num_classes, width)
    return sum(p.numel() for p in model.parameters())


def init_parameters(model, generator) -> None:
    """Draw every parameter from ``generator`` with PyTorch's default schemes.

    Linear/conv: Kaiming-uniform weights (a = sqrt(5)) and U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    biases, as ``reset_parameters`` does; norms: ones and zeros; embeddings: N(0, 1); LSTMs:
    every weight and bias U(-1/sqrt(hidden), 1/sqrt(hidden)). Any other module holding
    parameters itself must define ``init_parameters(generator)``, which draws its own
    (non-recursive) parameters; its submodules are visited by this loop.
    """
    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            if hasattr(module, "init_parameters"):
                module.init_parameters(generator)
            elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    fan_in = module.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in)
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, generator=generator)
            elif isinstance(module, nn.LSTM):
                bound = 1 / math.sqrt(module.hidden_size)
                for parameter in own:
                    nn.init.uniform_(parameter, -bound, bound, generator=generator)
            else:
                raise TypeError(f"no generator-driven init for {type(module).__name__}")
