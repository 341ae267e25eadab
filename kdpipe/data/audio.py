"""Shared audio helpers: read WAV files, resample to 16 kHz, fix the length, compute features.

Every audio family (speechcommands, urbansound8k, audiofolder) takes these options
(``FEATURE_DEFAULTS``):

- ``features``: ``"waveform"`` gives x float32 [N, 1, samples], the 16 kHz waveform in [-1, 1];
  ``"logmel"`` gives x float32 [N, 1, n_mels, frames], frames = 1 + samples // hop_length.
- ``n_mels`` (64 mel bands), ``n_fft`` (400 samples = 25 ms), ``hop_length`` (160 samples =
  10 ms): the power mel spectrogram of torchaudio.transforms.MelSpectrogram (Hann window,
  centred frames, HTK mel scale from 0 Hz to 8 kHz). Used only with ``"logmel"``.
- ``log_floor`` (1e-6, in power units of a [-1, 1] waveform): log-mel = ln(max(mel, log_floor)),
  so silence and zero padding stay finite (ln 1e-6 = -13.8).

WAV files are read with soundfile (libsndfile: 8-bit unsigned, 16/24/32-bit PCM and float,
any number of channels), never with torchaudio.load, which needs FFmpeg; a file shorter than
its WAV header says is refused by name. Channels are averaged to mono, every clip is resampled
to 16 kHz (torchaudio.functional.resample) and cut or zero-padded at its end to a fixed length,
so that a data set stacks into one tensor.
"""
from __future__ import annotations

from pathlib import Path

from kdpipe.data import DataError

SAMPLE_RATE = 16000  # Hz, every prepared audio data set

FEATURE_DEFAULTS = {
    "features": "waveform",
    "n_mels": 64,
    "n_fft": 400,
    "hop_length": 160,
    "log_floor": 1e-6,
}

FEATURES = ("waveform", "logmel")


def check_features(family: str, options: dict) -> dict:
    """``options`` (completed by kdpipe.data.check_options) with ``features`` and ``seconds``,
    the clip length every audio family takes, checked; a bad value -> DataError."""
    if options["features"] not in FEATURES:
        raise DataError(f"dataset {family!r}: option 'features' is {options['features']!r}; "
                        f"expected one of {', '.join(FEATURES)}")
    if not (isinstance(options["seconds"], (int, float)) and options["seconds"] > 0):
        raise DataError(f"dataset {family!r}: option 'seconds' is {options['seconds']!r}; "
                        "expected a positive number")
    return options


def feature_shape(options: dict) -> tuple:
    """The shape of one prepared clip with these (checked) options: [1, samples] waveforms, or
    [1, n_mels, frames] log-mel features (centred frames: 1 + samples // hop_length)."""
    samples = round(options["seconds"] * SAMPLE_RATE)
    if options["features"] == "waveform":
        return (1, samples)
    return (1, options["n_mels"], 1 + samples // options["hop_length"])


def read_wav(path: Path):
    """Read a WAV file as mono float32 samples in [-1, 1]; return ``(samples, rate_hz)``."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file is missing")
    check_wav_size(path)
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as error:
        raise DataError(f"{path}: not a readable WAV file ({error})") from error
    return samples.mean(axis=1), rate


def check_wav_size(path: Path) -> None:
    """Refuse a RIFF WAVE file shorter than its chunk headers say (libsndfile reads the samples
    that are there, so a clip cut off by an interrupted download or extraction would pass as a
    shorter clip, zero-padded). Other formats, and data sizes a streaming writer leaves unknown
    (0 or 0xFFFFFFFF), are left to libsndfile."""
    import struct

    present = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] not in (b"RIFF", b"RIFX") or header[8:] != b"WAVE":
            return
        order = "<" if header[:4] == b"RIFF" else ">"  # RIFX: the big-endian variant
        while len(chunk := f.read(8)) == 8:
            name, length = chunk[:4], struct.unpack(order + "I", chunk[4:])[0]
            expected = f.tell() + length
            if name == b"data" and length in (0, 0xFFFFFFFF):
                return
            if expected > present:
                raise DataError(
                    f"{path}: cut short: its WAV header says the file holds {expected:,} bytes "
                    f"(chunk {name.decode('latin-1')!r}), but it has {present:,}; the download "
                    "or extraction was interrupted: re-download or re-extract the data set")
            if name == b"data":
                return
            f.seek(length + (length & 1), 1)  # chunks are padded to an even length


def resample(samples, rate: int, new_rate: int = SAMPLE_RATE):
    """Resample a 1-D signal from ``rate`` to ``new_rate`` Hz (band-limited sinc interpolation)."""
    import torch
    import torchaudio

    samples = torch.as_tensor(samples, dtype=torch.float32)
    if rate == new_rate:
        return samples
    return torchaudio.functional.resample(samples, rate, new_rate)


def fix_length(samples, length: int):
    """Cut a 1-D signal to ``length`` samples, or zero-pad it at its end."""
    import torch

    samples = samples[:length]
    return torch.nn.functional.pad(samples, (0, length - samples.shape[0]))


def load_clips(paths: list, seconds: float, progress=None):
    """Read WAV files into a float32 tensor [N, 1, samples] at 16 kHz, ``seconds`` long each;
    ``progress`` (a kdpipe.progress.Progress) counts the files."""
    import torch

    length = round(seconds * SAMPLE_RATE)  # feature_shape's samples
    clips = torch.empty(len(paths), 1, length)  # filled in place: a data set can be gigabytes
    for i, path in enumerate(paths):
        samples, rate = read_wav(path)
        clips[i, 0] = fix_length(resample(samples, rate), length)
        if progress is not None:
            progress.advance()
    return clips


def log_mel(waves, n_mels: int, n_fft: int, hop_length: int, log_floor: float):
    """Log-mel features [N, 1, n_mels, frames] of waveforms [N, 1, samples] at 16 kHz."""
    import torch
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
    with torch.no_grad():
        return mel(waves).clamp_min(log_floor).log()


def load_features(paths: list, seconds: float, options: dict, chunk: int = 512,
                  label: str = "decoding audio"):
    """Read WAV files into the features that ``options`` name (see the module docstring), into
    one preallocated tensor; progress goes to stderr under ``label``."""
    import torch

    from kdpipe.progress import Progress

    with Progress(label, len(paths), "files") as progress:
        if options["features"] == "waveform":
            return load_clips(paths, seconds, progress)
        settings = {key: options[key] for key in ("n_mels", "n_fft", "hop_length", "log_floor")}
        # Chunks of files: the waveforms of a whole data set need not be in memory at once.
        features = None
        for start in range(0, len(paths), chunk):
            part = log_mel(load_clips(paths[start:start + chunk], seconds, progress), **settings)
            if features is None:
                features = torch.empty((len(paths),) + part.shape[1:])
            features[start:start + len(part)] = part
        return features


def prepared(train_paths: list, y_train: list, test_paths: list, y_test: list, classes: list,
             options: dict, family: str) -> dict:
    """The prepared-data dict of an audio family from its file lists and integer labels."""
    import torch

    for split, paths in (("train", train_paths), ("test", test_paths)):
        if not paths:
            raise DataError(f"{family}: the {split} split has no audio files")
    seconds = options["seconds"]
    meta = {"kind": "audio", "sample_rate": SAMPLE_RATE, "features": options["features"],
            "seconds": seconds}
    if options["features"] == "logmel":
        meta.update({key: options[key] for key in ("n_mels", "n_fft", "hop_length", "log_floor")})
    return {"x_train": load_features(train_paths, seconds, options, label=f"{family} train"),
            "y_train": torch.tensor(y_train, dtype=torch.int64),
            "x_test": load_features(test_paths, seconds, options, label=f"{family} test"),
            "y_test": torch.tensor(y_test, dtype=torch.int64),
            "classes": list(classes), "meta": meta}
