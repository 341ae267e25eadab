"""Extra tests on small real data sets: the official Tiny Shakespeare file, real photographs
(CIFAR-10 test images as JPEGs) and real speech (Free Spoken Digit Dataset, 8 kHz), written in
the official layouts by the writers of tests/fixtures.py. They read the folder that
KDPIPE_SHARED_DATA names (laid out as ``tinyshakespeare/input.txt``, ``fsdd/recordings/``,
``cifar10-jpeg-sample/test/<class>/``) and skip, saying so, where it is unset; the synthetic
tests of the other test_data_* files cover every reader without it."""
import hashlib
import shutil
import urllib.request

import numpy as np
import pytest
import torch
from fixtures import (CIFAR10_CLASSES, ENCODINGS, WORDS, write_cifar10, write_speechcommands,
                      write_svhn, write_urbansound8k)
from PIL import Image
from scipy.io import wavfile
from scipy.signal import resample_poly

from kdpipe.data import audiofolder, family, speechcommands, text, urbansound

SPEAKERS = ("george", "jackson")  # two of the six FSDD speakers
FSDD_RATE = 8000  # Hz


def shared(root, relative: str):
    path = root / relative
    if not path.exists():
        pytest.fail(f"{path} is absent: KDPIPE_SHARED_DATA names a folder without it",
                    pytrace=False)
    return path


def correlation(a, b):
    return float(np.corrcoef(np.asarray(a), np.asarray(b))[0, 1])


# Tiny Shakespeare ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def play(shared_data):
    return shared(shared_data, "tinyshakespeare/input.txt")


def test_tinyshakespeare_is_the_official_file_and_acquire_keeps_it(play, tmp_path, monkeypatch):
    raw = play.read_bytes()
    assert len(raw) == 1_115_394
    assert hashlib.sha256(raw).hexdigest() == text.SHAKESPEARE_SHA256

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"acquire tried to download {url}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    shutil.copy(play, tmp_path / "input.txt")
    text.shakespeare.acquire({}, tmp_path)  # verified in place: no download


def test_shakespeare_windows_and_its_65_symbols(play):
    corpus = play.read_text(encoding="utf-8")
    prepared = text.shakespeare.prepare({"context": 128}, play.parent)
    classes = prepared["classes"]
    assert len(classes) == 65 and classes == sorted(set(corpus))
    split = len(corpus) - round(len(corpus) * 0.1)
    assert prepared["x_train"].shape == ((split - 129) // 128 + 1, 128)
    assert "".join(classes[i] for i in prepared["x_test"][0].tolist()) == corpus[split:split + 128]
    assert "".join(classes[i] for i in prepared["y_train"][5].tolist()) == corpus[641:769]


# Photographs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photographs(shared_data):
    """4 real CIFAR-10 test images of each class, shuffled (seed 0), and their labels."""
    images, labels = [], []
    for label, name in enumerate(CIFAR10_CLASSES):
        folder = shared(shared_data, f"cifar10-jpeg-sample/test/{name}")
        for path in sorted(folder.glob("*.jpg"))[:4]:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    order = np.random.default_rng(0).permutation(len(images))
    return np.stack(images)[order], np.asarray(labels)[order]


def test_cifar10_and_svhn_files_of_real_photographs(photographs, tmp_path):
    images, labels = photographs
    chw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    write_cifar10(tmp_path, images, labels, test=10)
    write_svhn(tmp_path, images, labels, test=10)
    for name in ("cifar10", "svhn"):
        data = family(name).prepare({}, tmp_path)
        assert torch.equal(data["x_train"], chw[:30]) and torch.equal(data["x_test"], chw[30:])
        assert data["y_train"].tolist() == labels[:30].tolist()
        stats = data["meta"]["normalize"]
        # natural photographs: mid-grey means and a broad spread (CIFAR-10: ~0.47, ~0.25)
        assert all(0.3 < m < 0.65 for m in stats["mean"])
        assert all(0.15 < s < 0.35 for s in stats["std"])


# Speech -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recordings(shared_data):
    """{(digit, speaker, take): float samples at 8 kHz} of FSDD digits 0-2, takes 0-3, read by
    scipy (independently of kdpipe's reader)."""
    folder = shared(shared_data, "fsdd/recordings")
    clips = {}
    for d in range(3):
        for s in SPEAKERS:
            for t in range(4):
                rate, samples = wavfile.read(folder / f"{d}_{s}_{t}.wav")
                assert rate == FSDD_RATE and samples.dtype == np.int16
                clips[(d, s, t)] = samples.astype(np.float32) / 32768
    return clips


def test_speechcommands_of_real_speech(recordings, tmp_path):
    upsampled = {key: resample_poly(samples, 2, 1) for key, samples in recordings.items()}
    write_speechcommands(tmp_path, (
        (f"{WORDS[d]}/{s}_nohash_{t}.wav", samples,
         {0: "testing", 1: "validation"}.get(t, "train"))
        for (d, s, t), samples in upsampled.items()))
    prepared = speechcommands.prepare({}, tmp_path)
    words = sorted(WORDS[:3])
    assert prepared["classes"] == words
    test = sorted((WORDS[d], s, t) for d, s, t in upsampled if t == 0)
    assert prepared["y_test"].tolist() == [words.index(w) for w, _, _ in test]
    for row, (word, s, t) in zip(prepared["x_test"], test):
        expected = upsampled[(WORDS.index(word), s, t)][:16000]
        np.testing.assert_allclose(row[0, :len(expected)], expected, atol=2 / 32768, rtol=0)
        assert not row[0, len(expected):].any()

    logmel = speechcommands.prepare({"features": "logmel"}, tmp_path)["x_train"]
    assert torch.isfinite(logmel).all() and logmel.max() > np.log(1e-6) + 5  # far above the floor


def test_urbansound8k_of_real_speech_in_every_encoding(recordings, tmp_path):
    rows = []
    for i, ((d, s, t), samples) in enumerate(sorted(recordings.items())):
        rate, subtype, channels = ENCODINGS[i % len(ENCODINGS)]
        g = np.gcd(rate, FSDD_RATE)
        samples = resample_poly(samples, rate // g, FSDD_RATE // g)
        rows.append({"slice_file_name": f"{i}-{d}-{t}-0.wav", "fsID": i, "start": 0.0,
                     "end": 1.0, "salience": 1, "fold": 10 if t == 0 else 1,
                     "classID": 2 - d, "class": WORDS[d], "key": (d, s, t), "rate": rate,
                     "subtype": subtype, "samples": samples if channels == 1 else
                     np.stack([samples, 0.5 * samples], axis=1)})
    write_urbansound8k(tmp_path, rows)
    prepared = urbansound.prepare({"seconds": 1.0}, tmp_path)
    assert prepared["classes"] == ["two", "one", "zero"]
    ordered = ([row for row in rows if row["fold"] == 10]
               + [row for row in rows if row["fold"] != 10])
    assert torch.cat([prepared["y_test"], prepared["y_train"]]).tolist() == [
        row["classID"] for row in ordered]
    for x, row in zip(torch.cat([prepared["x_test"], prepared["x_train"]]), ordered):
        expected = resample_poly(recordings[row["key"]], 2, 1) * (
            0.75 if row["samples"].ndim == 2 else 1)
        assert correlation(x[0, :len(expected)], expected) > 0.98
        assert np.allclose(x[0, :len(expected)].std(), expected.std(), rtol=0.05)


def test_audiofolder_of_speech_as_recorded(shared_data, recordings, tmp_path):
    folder = shared(shared_data, "fsdd/recordings")
    for d, s, t in recordings:
        (tmp_path / WORDS[d]).mkdir(exist_ok=True)
        shutil.copy(folder / f"{d}_{s}_{t}.wav", tmp_path / WORDS[d] / f"{s}_{t}.wav")
    prepared = audiofolder.prepare({"test_fraction": 0.25, "split_seed": 3}, tmp_path)
    words = sorted(WORDS[:3])
    assert prepared["classes"] == words
    # each recording (matched by correlation with scipy's 16 kHz version) in one split, once,
    # under its word's label
    references = {key: resample_poly(samples, 2, 1) for key, samples in recordings.items()}
    seen = []
    for x, y in zip(torch.cat([prepared["x_train"], prepared["x_test"]]),
                    torch.cat([prepared["y_train"], prepared["y_test"]]).tolist()):
        scores = {key: correlation(x[0, :len(ref)], ref) for key, ref in references.items()}
        key = max(scores, key=scores.get)
        assert scores[key] > 0.98 and words[y] == WORDS[key[0]]
        seen.append(key)
    assert sorted(seen) == sorted(references)
