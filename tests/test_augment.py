"""Batch augmentations: shapes, determinism, and what each one does to a sample."""
import pytest
import torch
import torch.nn.functional as F

from kdpipe.augment import AUGMENTATIONS, augment, random_crop_flip, time_shift
from kdpipe.train import generator


def images(b=16, c=3, h=8, w=10, seed=0):
    return torch.rand(b, c, h, w, generator=generator(seed)) + 1  # no zeros: padding is visible


def test_registry_names():
    assert set(AUGMENTATIONS) == {"none", "crop_flip", "time_shift"}
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment("mixup", images(), generator(0))


def test_none_is_identity():
    x = images()
    assert torch.equal(augment("none", x, generator(0)), x)


@pytest.mark.parametrize("name, options, x", [
    ("crop_flip", {"padding": 2}, images()),
    ("crop_flip", {}, images(c=1, h=5, w=5)),
    ("time_shift", {"max_shift": 30}, torch.randn(16, 1, 100, generator=generator(1))),
    ("time_shift", {"max_shift": 3}, torch.randn(16, 1, 6, 11, generator=generator(2))),
])
def test_shape_kept_and_deterministic_for_a_seed(name, options, x):
    out = augment(name, x, generator(5), **options)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, augment(name, x, generator(5), **options))
    assert not torch.equal(out, augment(name, x, generator(6), **options))


def test_without_padding_samples_are_either_kept_or_mirrored():
    x = images(b=64)
    out = random_crop_flip(x, generator(3), padding=0)
    flipped = torch.tensor([torch.equal(o, torch.flip(s, dims=[-1])) for o, s in zip(out, x)])
    kept = torch.tensor([torch.equal(o, s) for o, s in zip(out, x)])
    assert (flipped ^ kept).all() and 16 < flipped.sum() < 48


def test_crops_are_windows_of_the_zero_padded_image():
    p, x = 3, images(b=32, h=6, w=7)
    out = random_crop_flip(x, generator(4), padding=p)
    padded = F.pad(x, (p,) * 4)
    offsets = set()
    for o, s in zip(out, padded):
        windows = [s[:, dy:dy + 6, dx:dx + 7] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
        candidates = windows + [torch.flip(window, [-1]) for window in windows]
        matches = [k for k, window in enumerate(candidates) if torch.equal(o, window)]
        assert len(matches) == 1  # padding zeros make every window unique
        offsets.add(matches[0] % len(windows))
    assert len(offsets) > 10  # offsets vary between samples


def test_crop_flip_works_on_uint8_pixels():
    x = (images() * 100).to(torch.uint8)
    out = random_crop_flip(x, generator(0))
    assert out.dtype == torch.uint8 and (out == 0).any()


def test_time_shift_rolls_each_sample_within_max_shift():
    x = torch.randn(64, 1, 4, 50, generator=generator(0))
    out = time_shift(x, generator(1), max_shift=5)
    shifts = []
    for o, s in zip(out, x):
        matches = [k for k in range(-5, 6) if torch.equal(o, torch.roll(s, k, dims=-1))]
        assert len(matches) == 1
        shifts.append(matches[0])
    assert len(set(shifts)) > 8  # shifts vary between samples
    with pytest.raises(ValueError, match="max_shift"):
        time_shift(x, generator(1), max_shift=50)
