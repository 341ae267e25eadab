"""Audio families on synthetic tones written in the official SpeechCommands v2 and UrbanSound8K
layouts and as a researcher's class folders (tests/fixtures.py). Each clip is a sine of its own
frequency, so every prepared row is checked against the tone written, computed here at 16 kHz."""
import shutil

import numpy as np
import pytest
import soundfile
import torch
from fixtures import (ENCODINGS, SPEAKERS, build_audiofolder, build_speechcommands,
                      build_urbansound8k, speech_clips, speechcommands_split, tone,
                      urbansound_rows)

from kdpipe import data
from kdpipe.data import DataError, audio, audiofolder, speechcommands, urbansound

CLIPS = speech_clips()  # the clips of the default fixtures: 3 digits x 2 speakers x takes 0-3
WORDS = sorted({clip["word"] for clip in CLIPS})  # class order: the word folders, sorted
# Largest error of a clip at 16 kHz, in [-1, 1] units: quantisation (8-bit: steps of 1/128,
# two once the resampler has spread them) and, for a clip resampled to 16 kHz, the filter's
# ripple; within 32 samples of a clip's ends (where the sine starts or stops abruptly) the
# resampler rings by up to 0.05.
QUANTISATION = {"PCM_U8": 2 / 128, "PCM_16": 2 / 32768, "PCM_24": 1e-6, "PCM_32": 1e-6,
                "FLOAT": 1e-7}
RIPPLE, EDGE = 1e-3, 0.06


def assert_wave(row, clip, subtype="PCM_16", resampled=False, gain=1.0, seconds=1.0):
    """``row`` (a prepared waveform [samples] at 16 kHz) is ``clip``'s tone times ``gain``, cut
    or zero-padded to ``seconds``."""
    row = np.asarray(row, dtype=np.float64)
    expected = gain * tone(clip["frequency"], min(clip["seconds"], seconds), 16000)
    n = len(expected)
    assert row.shape == (round(seconds * 16000),)
    error = np.abs(row[:n] - expected)
    if resampled:
        assert error[32:n - 32].max() < QUANTISATION[subtype] + RIPPLE
        assert error.max() < EDGE
    else:
        assert error.max() < QUANTISATION[subtype]
    assert not row[n + 1:].any()  # zero padding (+1: a resampled clip's last partial sample)


def dominant_frequency(row) -> float:
    """The frequency (Hz) of the strongest component of a 1 s waveform at 16 kHz."""
    return float(np.argmax(np.abs(np.fft.rfft(np.asarray(row)))))  # 1 s: bins are 1 Hz apart


@pytest.fixture(scope="module")
def speech_commands(tmp_path_factory):
    """raw_dir with speech_commands_v0.02/: 16 kHz 16-bit tones, list files, background noise."""
    raw = tmp_path_factory.mktemp("speechcommands")
    build_speechcommands(raw)
    return raw


@pytest.fixture(scope="module")
def urbansound8k(tmp_path_factory):
    """raw_dir with UrbanSound8K/: metadata CSV and fold folders of mixed encodings; its rows."""
    raw = tmp_path_factory.mktemp("urbansound8k")
    build_urbansound8k(raw)
    return raw, urbansound_rows()


def test_read_wav_every_encoding(tmp_path):
    original = tone(440.0, 0.25, 8000)
    for subtype, tolerance in QUANTISATION.items():
        soundfile.write(tmp_path / f"{subtype}.wav", original, 8000, subtype)
        samples, rate = audio.read_wav(tmp_path / f"{subtype}.wav")
        assert rate == 8000 and samples.dtype == np.float32 and samples.shape == original.shape
        np.testing.assert_allclose(samples, original, atol=tolerance, rtol=0)
    soundfile.write(tmp_path / "stereo.wav", np.stack([original, 0.5 * original], 1), 8000, "FLOAT")
    samples, _ = audio.read_wav(tmp_path / "stereo.wav")
    np.testing.assert_allclose(samples, 0.75 * original, atol=1e-7, rtol=0)


def test_resample_keeps_duration_and_content():
    upsampled = audio.resample(tone(700.0, 0.5, 8000), 8000)
    assert upsampled.dtype == torch.float32
    assert upsampled.shape == (8000,)  # same duration at twice the rate
    error = np.abs(upsampled.numpy() - tone(700.0, 0.5, 16000))
    assert error[32:-32].max() < RIPPLE and error.max() < EDGE
    clip = audio.fix_length(upsampled, 16000)
    assert clip.shape == (16000,)
    assert torch.equal(clip[:8000], upsampled) and not clip[8000:].any()
    assert torch.equal(audio.fix_length(upsampled, 100), upsampled[:100])


def expected_order(clips, split):
    """The clips of ``split``, in the order prepare gives them: word folders sorted, then each
    folder's files sorted by name (``<speaker>_nohash_<take>.wav``)."""
    chosen = [c for c in clips if speechcommands_split(c["take"]) == split]
    return sorted(chosen, key=lambda c: (c["word"], f"{c['speaker']}_nohash_{c['take']}.wav"))


def test_speechcommands_split_labels_and_values(speech_commands):
    prepared = speechcommands.prepare({}, speech_commands)
    assert prepared["classes"] == WORDS  # sorted folders; _background_noise_ is not a class
    assert prepared["meta"] == {"kind": "audio", "sample_rate": 16000, "features": "waveform",
                                "seconds": 1.0}
    # test = take 0 (testing_list.txt), validation = take 1 (left out), train = takes 2 and 3
    test, train = expected_order(CLIPS, "testing"), expected_order(CLIPS, "train")
    assert prepared["x_test"].shape == (6, 1, 16000) and prepared["x_test"].dtype == torch.float32
    assert prepared["x_train"].shape == (12, 1, 16000)
    assert prepared["y_test"].dtype == torch.int64
    assert prepared["y_test"].tolist() == [WORDS.index(c["word"]) for c in test]
    assert prepared["y_train"].tolist() == [WORDS.index(c["word"]) for c in train]
    for row, clip in zip(prepared["x_test"], test):
        assert_wave(row[0], clip)  # 0.6 s, zero-padded to 1 s
    for row, clip in zip(prepared["x_train"], train):
        assert_wave(row[0], clip)  # take 3 lasts 1.2 s: cut to 1 s


def test_speechcommands_logmel_and_words(speech_commands):
    options = {"features": "logmel", "n_mels": 32, "words": ["zero", "two"]}
    prepared = speechcommands.prepare(options, speech_commands)
    assert prepared["classes"] == ["two", "zero"]
    assert prepared["x_train"].shape == (8, 1, 32, 1 + 16000 // 160)
    assert prepared["x_test"].shape == (4, 1, 32, 101)
    assert prepared["y_train"].tolist() == [0] * 4 + [1] * 4
    x = prepared["x_train"]
    assert torch.isfinite(x).all() and x.min() == pytest.approx(np.log(1e-6))  # the padding
    assert prepared["meta"]["n_mels"] == 32 and prepared["meta"]["features"] == "logmel"
    # Each tone's energy peaks in the mel band centred nearest its frequency: 32 triangular
    # bands with centres equally spaced on the HTK mel scale, mel = 2595 log10(1 + f / 700),
    # between 0 Hz and 8 kHz.
    top = 2595 * np.log10(1 + 8000 / 700)
    centres = 700 * (10 ** (np.arange(1, 33) * top / 33 / 2595) - 1)
    train = [c for c in expected_order(CLIPS, "train") if c["word"] in ("zero", "two")]
    for features, clip in zip(x, train):
        band = int(features[0, :, 5:55].mean(dim=1).argmax())  # frames within the first 0.6 s
        assert band == int(np.abs(centres - clip["frequency"]).argmin())


def test_speechcommands_errors(speech_commands, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(speech_commands, raw)
    root = raw / speechcommands.FOLDER
    with pytest.raises(DataError, match="unknown option.*sample_rate"):
        speechcommands.prepare({"sample_rate": 8000}, raw)
    with pytest.raises(DataError, match="eight"):
        speechcommands.prepare({"words": ["zero", "eight"]}, raw)

    corrupt = root / "two" / f"{SPEAKERS[0]}_nohash_2.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all")
    with pytest.raises(DataError, match=f"{SPEAKERS[0]}_nohash_2.wav"):
        speechcommands.prepare({}, raw)

    (root / "zero" / f"{SPEAKERS[1]}_nohash_0.wav").unlink()
    with pytest.raises(DataError, match="testing_list.txt"):
        speechcommands.prepare({}, raw)
    (root / "testing_list.txt").unlink()
    with pytest.raises(DataError, match="testing_list.txt"):
        speechcommands.prepare({}, raw)


def test_urbansound8k_folds_classes_and_encodings(urbansound8k):
    raw, rows = urbansound8k
    assert {(row["rate"], row["subtype"], row["samples"].reshape(len(row["samples"]), -1).shape[1])
            for row in rows} == set(ENCODINGS)  # every encoding is read
    urbansound.acquire({"seconds": 1.0}, raw)  # in place: no error
    prepared = urbansound.prepare({}, raw)
    assert prepared["classes"] == ["two", "one", "zero"]  # by classID
    test_rows = [row for row in rows if row["fold"] == 10]
    train_rows = [row for row in rows if row["fold"] != 10]
    assert prepared["x_test"].shape == (len(test_rows), 1, 64000) == (6, 1, 64000)
    assert prepared["x_train"].shape == (18, 1, 64000)
    assert prepared["y_test"].tolist() == [row["classID"] for row in test_rows]
    assert prepared["y_train"].tolist() == [row["classID"] for row in train_rows]
    for x, row in zip(torch.cat([prepared["x_test"], prepared["x_train"]]), test_rows + train_rows):
        stereo = row["samples"].ndim == 2  # channels [s, s / 2]: their mean is 0.75 s
        assert_wave(x[0], row["clip"], row["subtype"], resampled=row["rate"] != 16000,
                    gain=0.75 if stereo else 1.0, seconds=4.0)

    fold1 = urbansound.prepare({"test_fold": 1, "features": "logmel", "seconds": 1.0}, raw)
    assert fold1["x_test"].shape == (12, 1, 64, 101) and fold1["x_train"].shape == (12, 1, 64, 101)
    assert fold1["y_test"].tolist() == [row["classID"] for row in rows if row["fold"] == 1]


def test_urbansound8k_errors(urbansound8k, tmp_path):
    with pytest.raises(DataError, match="manual download.*UrbanSound8K.csv.*fold1"):
        urbansound.acquire({}, tmp_path)
    raw = tmp_path / "raw"
    shutil.copytree(urbansound8k[0], raw)
    root = raw / urbansound.FOLDER
    with pytest.raises(DataError, match="test_fold"):
        urbansound.prepare({"test_fold": 11}, raw)
    corrupt = next(row["slice_file_name"] for row in urbansound8k[1] if row["fold"] == 1)
    (root / "audio" / "fold1" / corrupt).write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=corrupt):
        urbansound.prepare({}, raw)
    (root / urbansound.METADATA).unlink()
    with pytest.raises(DataError, match="UrbanSound8K.csv"):
        urbansound.prepare({}, raw)


def test_audiofolder_stratified_split(tmp_path):
    build_audiofolder(tmp_path)
    options = {"test_fraction": 0.25, "split_seed": 3}
    prepared = audiofolder.prepare(options, tmp_path)
    assert prepared["classes"] == WORDS
    assert prepared["x_train"].shape == (18, 1, 16000) and prepared["x_test"].shape == (6, 1, 16000)
    assert torch.bincount(prepared["y_test"]).tolist() == [2, 2, 2]  # 25 % of each class
    assert torch.bincount(prepared["y_train"]).tolist() == [6, 6, 6]
    # each clip, known by its tone's frequency, is in exactly one split, under its word's label
    # and with its samples (written at 8 kHz, resampled to 16 kHz)
    by_frequency = {clip["frequency"]: clip for clip in CLIPS}
    seen = []
    for x, y in zip(torch.cat([prepared["x_train"], prepared["x_test"]]),
                    torch.cat([prepared["y_train"], prepared["y_test"]]).tolist()):
        clip = by_frequency[dominant_frequency(x[0])]
        assert WORDS[y] == clip["word"]
        assert_wave(x[0], clip, resampled=True)
        seen.append(clip["frequency"])
    assert sorted(seen) == sorted(by_frequency)

    again = audiofolder.prepare({**options, "root": str(tmp_path)}, tmp_path / "unused")
    assert torch.equal(again["x_test"], prepared["x_test"])
    other = audiofolder.prepare({**options, "split_seed": 4}, tmp_path)
    assert not torch.equal(other["x_test"], prepared["x_test"])
    half = audiofolder.prepare({"test_fraction": 0.5}, tmp_path)
    assert torch.bincount(half["y_test"]).tolist() == [4, 4, 4]


def test_audiofolder_errors(tmp_path):
    with pytest.raises(DataError, match="missing"):
        audiofolder.acquire({"root": str(tmp_path / "absent")}, tmp_path)
    (tmp_path / "yes").mkdir()
    with pytest.raises(DataError, match="yes"):
        audiofolder.prepare({}, tmp_path)
    with pytest.raises(DataError, match="test_fraction"):
        audiofolder.prepare({"test_fraction": 1.5}, tmp_path)


def test_registry_prepare_and_load(speech_commands, tmp_path):
    out = tmp_path / "speechcommands.pt"
    written = data.prepare("speechcommands", {"words": ["one", "two"]}, speech_commands, out)
    dataset = data.load(out)
    assert dataset.classes == ["one", "two"] and dataset.input_shape == (1, 16000)
    assert torch.equal(written.x_train, dataset.x_train)  # what prepare returns is what it wrote
    assert torch.equal(written.y_test, dataset.y_test)
    assert data.family("urbansound8k") is urbansound and data.family("audiofolder") is audiofolder


def test_long_decoding_reports_progress_in_the_log(speech_commands, capsys):
    speechcommands.prepare({}, speech_commands)
    lines = capsys.readouterr().err.splitlines()
    assert "speechcommands train: 12/12 files (100%)" in lines[0] and "files/s" in lines[0]
    assert "speechcommands test: 6/6 files (100%)" in lines[1]
