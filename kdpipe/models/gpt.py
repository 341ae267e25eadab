"""A character-level GPT after nanoGPT (Karpathy 2022; GPT-2, Radford et al. 2019): token and
learned position embeddings, pre-LayerNorm transformer blocks of causal self-attention and a 4x
GELU MLP, a final LayerNorm and a linear head. Input int64 [B, L] -> logits [B, L, vocab].

At width 1 it is nanoGPT's shakespeare_char model: 6 blocks, 6 heads of 64 dims (embedding
384). The block size (the most positions) is L of ``input_shape = (L,)``. Width scales the
per-head size, ``scaled(64, width)``; the head count stays 6, so the embedding (6 times that)
stays divisible by it. Unlike nanoGPT: no dropout (training must be deterministic), the head is
not tied to the token embedding (so that stem and head are separate stages), and weights get
PyTorch's default init (``init_parameters``) instead of N(0, 0.02).

``SelfAttention`` and ``Block`` also serve the ViT (``causal=False``).
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.models import scaled

DEPTH = 6
HEADS = 6
HEAD_DIM = 64
MLP_RATIO = 4


class SelfAttention(nn.Module):
    """Multi-head self-attention over [B, L, dim]; ``causal``: position t sees only 0..t."""

    def __init__(self, dim: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, l, d = x.shape
        # [B, L, 3 * dim] -> three [B, heads, L, head_dim]
        q, k, v = self.qkv(x).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, l, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, causal: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, dim))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenAndPosition(nn.Module):
    """Token embedding plus learned position embedding: int64 [B, L] -> [B, L, dim]."""

    def __init__(self, vocab_size: int, block_size: int, dim: int):
        super().__init__()
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(block_size, dim)

    def forward(self, idx):
        length = idx.shape[1]
        if length > self.position.num_embeddings:
            raise ValueError(f"sequence of {length} tokens exceeds the block size "
                             f"{self.position.num_embeddings}")
        return self.token(idx) + self.position(torch.arange(length, device=idx.device))


def build(input_shape: tuple, num_classes: int, width: float) -> nn.Sequential:
    (block_size,) = input_shape
    dim = HEADS * scaled(HEAD_DIM, width)
    stages = OrderedDict(stem=TokenAndPosition(num_classes, block_size, dim))
    for k in range(1, DEPTH + 1):
        stages[f"stage{k}"] = Block(dim, HEADS, MLP_RATIO * dim, causal=True)
    stages["head"] = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
    return nn.Sequential(stages)
