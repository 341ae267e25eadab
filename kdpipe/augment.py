"""Data augmentation of whole batches on their own device.

Every augmentation takes a batch ``x`` and a ``torch.Generator`` on ``x``'s device, from which it
draws all of its randomness (never from torch's global RNG), and returns a new batch of the
same shape and dtype. Each sample gets its own draw, applied to the whole batch at once by index
arithmetic and one ``gather``, without a Python loop over samples.
"""
from __future__ import annotations


def identity(x, generator):
    """``none``: the batch itself."""
    return x


def random_crop_flip(x, generator, padding: int = 4):
    """Images [B, C, H, W]: zero-pad every side by ``padding`` pixels, crop a random H x W window
    (offsets uniform in 0..2 * padding on each axis, per sample), then mirror left-right with
    probability 1/2 (per sample). Zero is in ``x``'s own units (black for uint8 pixels)."""
    import torch
    import torch.nn.functional as F

    b, c, h, w = x.shape
    device = x.device
    top = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator, device=device)
    flip = torch.randint(0, 2, (b, 1), generator=generator, device=device).bool()
    columns = torch.arange(w, device=device)
    columns = left + torch.where(flip, w - 1 - columns, columns)  # [B, W] in the padded image
    rows = top + torch.arange(h, device=device)                   # [B, H]
    padded = F.pad(x, (padding,) * 4)
    flat_index = rows[:, :, None] * (w + 2 * padding) + columns[:, None, :]  # [B, H, W]
    crops = padded.flatten(2).gather(2, flat_index.view(b, 1, h * w).expand(b, c, h * w))
    return crops.view(b, c, h, w)


def time_shift(x, generator, max_shift: int):
    """Waveforms [B, 1, samples] or log-mel [B, 1, n_mels, frames]: roll every sample along its
    last (time) axis by its own shift, uniform in -max_shift..max_shift steps (samples or
    frames). Circular, so nothing needs a fill value (zero would not be silence in log-mel)."""
    import torch

    steps = x.shape[-1]
    if not 0 <= max_shift < steps:
        raise ValueError(f"max_shift must be in 0..{steps - 1} (the time axis), got {max_shift}")
    b = x.shape[0]
    shift = torch.randint(-max_shift, max_shift + 1, (b, 1), generator=generator, device=x.device)
    source = (torch.arange(steps, device=x.device) - shift) % steps  # [B, steps]
    index = source.view((b,) + (1,) * (x.dim() - 2) + (steps,)).expand(x.shape)
    return x.gather(-1, index)


AUGMENTATIONS = {
    "none": identity,
    "crop_flip": random_crop_flip,
    "time_shift": time_shift,
}


def augment(name: str, x, generator, **options):
    """Apply the augmentation ``name`` with its ``options`` (e.g. ``padding``, ``max_shift``)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](x, generator, **options)
