"""A character-level LSTM language model (as in Karpathy's char-rnn): an embedding, two LSTM
layers and a linear head on every position. Input int64 [B, L] -> logits [B, L, vocab].

Embedding and hidden size are both 512 * width. Each LSTM layer is its own stage (``stage1``,
``stage2``), so a hook can address either; two stacked one-layer ``nn.LSTM`` compute exactly
what one two-layer ``nn.LSTM`` without dropout does. The states start at zero for every
window. ``input_shape`` (L,) does not constrain the length: any L works.
"""
from collections import OrderedDict

from torch import nn

from kdpipe.models import scaled

HIDDEN = 512


class LSTMLayer(nn.Module):
    """One batch-first LSTM layer that returns only its outputs [B, L, hidden]."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x):
        outputs, _ = self.lstm(x)
        return outputs


def build(input_shape: tuple, num_classes: int, width: float) -> nn.Sequential:
    hidden = scaled(HIDDEN, width)
    return nn.Sequential(OrderedDict(
        stem=nn.Embedding(num_classes, hidden),
        stage1=LSTMLayer(hidden, hidden),
        stage2=LSTMLayer(hidden, hidden),
        head=nn.Linear(hidden, num_classes),
    ))
