"""A CIFAR-size Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

4x4 patches (64 tokens for a 32x32 image; image sides must be multiples of 4) linearly embedded
with learned position embeddings, 6 pre-LayerNorm blocks of 8-head self-attention and a GELU
MLP of 2x the embedding, a final LayerNorm, the mean over tokens and a linear head. The token
mean replaces the class token, as in Beyer et al. 2022 ("Better plain ViT baselines"); no
dropout. At width 1 the embedding is 256 (8 heads of 32 dims). Width scales the per-head size,
``scaled(32, width)``; the head count stays 8, so the embedding stays divisible by it.
"""
from collections import OrderedDict

import torch
from torch import nn

from kdpipe.models import scaled
from kdpipe.models.gpt import Block

PATCH = 4
DEPTH = 6
HEADS = 8
HEAD_DIM = 32
MLP_RATIO = 2


class PatchEmbedding(nn.Module):
    """Images [B, C, H, W] -> patch tokens [B, (H / 4) * (W / 4), dim] plus position embeddings."""

    def __init__(self, channels: int, height: int, width: int, dim: int):
        super().__init__()
        if height % PATCH or width % PATCH:
            raise ValueError(f"image sides must be multiples of {PATCH}, got {height}x{width}")
        self.project = nn.Conv2d(channels, dim, PATCH, stride=PATCH)
        self.position = nn.Parameter(torch.empty(1, (height // PATCH) * (width // PATCH), dim))

    def init_parameters(self, generator) -> None:
        """N(0, 0.02) position embeddings as in ViT; ``project`` is drawn as any conv."""
        nn.init.normal_(self.position, std=0.02, generator=generator)

    def forward(self, x):
        return self.project(x).flatten(2).transpose(1, 2) + self.position


class TokenMean(nn.Module):
    """[B, tokens, dim] -> [B, dim]."""

    def forward(self, x):
        return x.mean(dim=1)


def build(input_shape: tuple, num_classes: int, width: float) -> nn.Sequential:
    channels, height, image_width = input_shape
    dim = HEADS * scaled(HEAD_DIM, width)
    stages = OrderedDict(stem=PatchEmbedding(channels, height, image_width, dim))
    for k in range(1, DEPTH + 1):
        stages[f"stage{k}"] = Block(dim, HEADS, MLP_RATIO * dim, causal=False)
    stages["head"] = nn.Sequential(nn.LayerNorm(dim), TokenMean(), nn.Linear(dim, num_classes))
    return nn.Sequential(stages)
