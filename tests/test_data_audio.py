"""Audio families on real speech (Free Spoken Digit Dataset, 8 kHz) laid out in the official
SpeechCommands v2 and UrbanSound8K formats, and as a researcher's class folders."""
import shutil

import numpy as np
import pytest
import soundfile
import torch
from fixtures import (ENCODINGS, FSDD_RATE, SPEAKERS, WORDS, build_audiofolder,
                      build_speechcommands, build_urbansound8k, fsdd_recordings, pcm16,
                      urbansound_clips)

from kdpipe import data
from kdpipe.data import DataError, audio, audiofolder, speechcommands, urbansound

DIGITS = dict(enumerate(WORDS[:3]))  # the digits of the default fixtures


@pytest.fixture(scope="module")
def recordings(shared_data):
    """The FSDD clips of the default fixtures: 3 digits x 2 speakers x takes 0-3."""
    return fsdd_recordings(shared_data)


def correlation(a, b):
    return float(np.corrcoef(np.asarray(a), np.asarray(b))[0, 1])


@pytest.fixture(scope="module")
def speech_commands(tmp_path_factory, shared_data):
    """raw_dir with speech_commands_v0.02/: 16 kHz 16-bit clips, list files, background noise."""
    raw = tmp_path_factory.mktemp("speechcommands")
    build_speechcommands(raw, shared_data)
    return raw


@pytest.fixture(scope="module")
def urbansound8k(tmp_path_factory, shared_data, recordings):
    """raw_dir with UrbanSound8K/: metadata CSV and fold folders of mixed encodings."""
    raw = tmp_path_factory.mktemp("urbansound8k")
    build_urbansound8k(raw, shared_data)
    return raw, urbansound_clips(recordings)


def test_read_wav_every_encoding(recordings, tmp_path):
    original = pcm16(recordings[(1, "george", 0)])
    samples, rate = audio.read_wav(recordings[(1, "george", 0)])
    assert rate == FSDD_RATE and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, original)
    for subtype, tolerance in (("PCM_U8", 1 / 128), ("PCM_24", 1e-6), ("FLOAT", 0)):
        soundfile.write(tmp_path / f"{subtype}.wav", original, FSDD_RATE, subtype)
        samples, _ = audio.read_wav(tmp_path / f"{subtype}.wav")
        np.testing.assert_allclose(samples, original, atol=tolerance)
    soundfile.write(tmp_path / "stereo.wav", np.stack([original, 0.5 * original], 1), 8000, "FLOAT")
    samples, _ = audio.read_wav(tmp_path / "stereo.wav")
    np.testing.assert_allclose(samples, 0.75 * original, atol=1e-7)


def test_resample_keeps_duration_and_content(recordings):
    original = pcm16(recordings[(2, "jackson", 3)])
    upsampled = audio.resample(original, FSDD_RATE)
    assert upsampled.dtype == torch.float32
    assert upsampled.shape == (2 * len(original),)  # same duration at twice the rate
    assert correlation(upsampled[::2], original) > 0.99
    clip = audio.fix_length(upsampled, 16000)
    assert clip.shape == (16000,)
    assert torch.equal(clip[:len(upsampled)], upsampled) and not clip[len(upsampled):].any()
    assert torch.equal(audio.fix_length(upsampled, 100), upsampled[:100])


def test_speechcommands_split_and_labels(speech_commands):
    prepared = speechcommands.prepare({}, speech_commands)
    words = sorted(DIGITS.values())
    assert prepared["classes"] == words  # sorted folders; _background_noise_ is not a class
    assert prepared["meta"] == {"kind": "audio", "sample_rate": 16000, "features": "waveform",
                                "seconds": 1.0}
    # test = take 0 (testing_list.txt), validation = take 1 (left out), train = takes 2 and 3
    assert prepared["x_test"].shape == (6, 1, 16000) and prepared["x_test"].dtype == torch.float32
    assert prepared["x_train"].shape == (12, 1, 16000)
    assert prepared["y_test"].dtype == torch.int64
    assert prepared["y_test"].tolist() == [0, 0, 1, 1, 2, 2]
    assert prepared["y_train"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    root = speech_commands / speechcommands.FOLDER
    expected = [(word, speaker, 0) for word in words for speaker in SPEAKERS]
    for row, (word, speaker, take) in zip(prepared["x_test"], expected):
        samples, _ = soundfile.read(root / word / f"{speaker}_nohash_{take}.wav", dtype="float32")
        assert torch.equal(row[0, :len(samples)], torch.from_numpy(samples))
        assert not row[0, len(samples):].any()  # zero-padded to 1 s


def test_speechcommands_logmel_and_words(speech_commands):
    options = {"features": "logmel", "n_mels": 32, "words": ["zero", "two"]}
    prepared = speechcommands.prepare(options, speech_commands)
    assert prepared["classes"] == ["two", "zero"]
    assert prepared["x_train"].shape == (8, 1, 32, 1 + 16000 // 160)
    assert prepared["x_test"].shape == (4, 1, 32, 101)
    assert prepared["y_train"].tolist() == [0] * 4 + [1] * 4
    x = prepared["x_train"]
    assert torch.isfinite(x).all() and x.min() >= np.log(1e-6) - 1e-4
    assert x.max() > np.log(1e-6) + 5  # speech is far above the floor
    assert prepared["meta"]["n_mels"] == 32 and prepared["meta"]["features"] == "logmel"


def test_speechcommands_errors(speech_commands, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(speech_commands, raw)
    root = raw / speechcommands.FOLDER
    with pytest.raises(DataError, match="unknown option.*sample_rate"):
        speechcommands.prepare({"sample_rate": 8000}, raw)
    with pytest.raises(DataError, match="eight"):
        speechcommands.prepare({"words": ["zero", "eight"]}, raw)

    corrupt = root / "two" / "george_nohash_2.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all")
    with pytest.raises(DataError, match="george_nohash_2.wav"):
        speechcommands.prepare({}, raw)

    (root / "zero" / "jackson_nohash_0.wav").unlink()
    with pytest.raises(DataError, match="testing_list.txt"):
        speechcommands.prepare({}, raw)
    (root / "testing_list.txt").unlink()
    with pytest.raises(DataError, match="testing_list.txt"):
        speechcommands.prepare({}, raw)


def test_urbansound8k_folds_classes_and_encodings(urbansound8k):
    raw, rows = urbansound8k
    urbansound.acquire({}, raw)  # in place: no error
    prepared = urbansound.prepare({}, raw)
    assert prepared["classes"] == ["two", "one", "zero"]  # by classID
    test_rows = [row for row in rows if row["fold"] == 10]
    train_rows = [row for row in rows if row["fold"] != 10]
    assert prepared["x_test"].shape == (len(test_rows), 1, 64000) == (6, 1, 64000)
    assert prepared["x_train"].shape == (18, 1, 64000)
    assert prepared["y_test"].tolist() == [row["classID"] for row in test_rows]
    assert prepared["y_train"].tolist() == [row["classID"] for row in train_rows]
    for x, row in zip(torch.cat([prepared["x_test"], prepared["x_train"]]), test_rows + train_rows):
        stereo = ENCODINGS[int(row["slice_file_name"].split("-")[0]) % len(ENCODINGS)][2] == 2
        expected = audio.resample(pcm16(row["source"]), FSDD_RATE) * (0.75 if stereo else 1)
        assert correlation(x[0, :len(expected)], expected) > 0.98
        assert np.allclose(x[0, :len(expected)].std(), expected.std(), rtol=0.05)
        assert not x[0, len(expected) + 2:].any()  # same duration at 16 kHz, then padding

    fold1 = urbansound.prepare({"test_fold": 1, "features": "logmel", "seconds": 1.0}, raw)
    assert fold1["x_test"].shape == (12, 1, 64, 101) and fold1["x_train"].shape == (12, 1, 64, 101)


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


def test_audiofolder_stratified_split(shared_data, recordings, tmp_path):
    build_audiofolder(tmp_path, shared_data)
    options = {"test_fraction": 0.25, "split_seed": 3}
    prepared = audiofolder.prepare(options, tmp_path)
    assert prepared["classes"] == ["one", "two", "zero"]
    assert prepared["x_train"].shape == (18, 1, 16000) and prepared["x_test"].shape == (6, 1, 16000)
    assert torch.bincount(prepared["y_test"]).tolist() == [2, 2, 2]  # 25 % of each class
    assert torch.bincount(prepared["y_train"]).tolist() == [6, 6, 6]
    # each clip is in exactly one split, under its own folder's label
    labels = sorted(DIGITS.values())
    clips = {(tuple(audio.resample(pcm16(source), FSDD_RATE)[:400].tolist()),
              labels.index(DIGITS[d])) for (d, _, _), source in recordings.items()}
    seen = {(tuple(x[0, :400].tolist()), y) for x, y in
            zip(torch.cat([prepared["x_train"], prepared["x_test"]]),
                torch.cat([prepared["y_train"], prepared["y_test"]]).tolist())}
    assert seen == clips and len(seen) == 24

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
