"""Tiny data sets in the official on-disk layouts, built from the real data in the shared folder.

One builder per family: ``build_<family>(raw_dir, shared_data, <sizes>) -> options`` writes the
family's official files under ``raw_dir``, exactly where its ``acquire`` and ``prepare`` look,
and returns the options a config would give the family for them. The defaults give tens of
training samples and a test split with two or more samples of several classes, so that the
data tests run in seconds and a model trains an epoch on any of them in well under a second.
``FIXTURES`` maps every family (except digits, which ships with scikit-learn) to its builder.

Sources (see the shared folder's README): real CIFAR-10 test images (JPEG) for the image
families, Free Spoken Digit Dataset recordings (8 kHz) for the audio ones, Tiny Shakespeare for
the text ones. A builder skips the calling test where its source is absent.
"""
import csv
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image
from scipy.io import savemat, wavfile
from scipy.signal import resample_poly

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
WNIDS = ["n09999999", "n01111111", "n05555555"]  # deliberately not in alphabetical order
TINY_VAL_LABELS = (2, 0, 1, 1, 0, 2)  # the classes of val_0 .. val_5: neither grouped nor sorted

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEAKERS = ("george", "jackson")  # two of the six FSDD speakers
FSDD_RATE = 8000  # Hz
# (rate Hz, soundfile subtype, channels): every reader path, cycled over the UrbanSound8K clips.
ENCODINGS = [(8000, "PCM_16", 1), (22050, "PCM_U8", 1), (44100, "PCM_24", 2),
             (48000, "FLOAT", 1), (11025, "PCM_16", 2)]


def shared(shared_data: Path, relative: str) -> Path:
    """``shared_data / relative``; skips the calling test where it is absent."""
    path = shared_data / relative
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


# Images -------------------------------------------------------------------------------------

def cifar_images(shared_data: Path, name: str, count: int) -> np.ndarray:
    """The first ``count`` shared CIFAR-10 images of class ``name``: uint8 [count, 32, 32, 3]."""
    folder = shared(shared_data, f"cifar10-jpeg-sample/test/{name}")
    images = []
    for path in sorted(folder.glob("*.jpg"))[:count]:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB")))
    return np.stack(images)


def cifar_sample(shared_data: Path, per_class: int = 4, classes=CIFAR10_CLASSES):
    """``per_class`` real images of each of ``classes``, shuffled (seed 0): uint8 images
    [N, 32, 32, 3] and int64 labels [N], label i meaning ``classes[i]``."""
    images = np.concatenate([cifar_images(shared_data, name, per_class) for name in classes])
    labels = np.repeat(np.arange(len(classes)), per_class)
    order = np.random.default_rng(0).permutation(len(images))
    return images[order], labels[order]


def write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def planes(images: np.ndarray) -> np.ndarray:
    """[N, 32, 32, 3] -> the official rows [N, 3072]: red, green, blue planes, row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def build_cifar10(raw_dir: Path, shared_data: Path, per_class: int = 4, test: int = 10) -> dict:
    """``cifar-10-batches-py/``: ``cifar_sample(shared_data, per_class)``, its last ``test``
    images in ``test_batch`` and the others, in order, spread over ``data_batch_1..5``."""
    images, labels = cifar_sample(shared_data, per_class)
    folder = raw_dir / "cifar-10-batches-py"
    train = len(images) - test
    for i, rows in enumerate(np.array_split(np.arange(train), 5)):
        write_pickle(folder / f"data_batch_{i + 1}", {
            b"batch_label": f"training batch {i + 1} of 5".encode(),
            b"data": planes(images[rows]), b"labels": labels[rows].tolist()})
    write_pickle(folder / "test_batch", {b"data": planes(images[train:]),
                                         b"labels": labels[train:].tolist()})
    write_pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_CLASSES],
                                           b"num_cases_per_batch": train // 5, b"num_vis": 3072})
    return {}


def build_cifar100(raw_dir: Path, shared_data: Path, per_class: int = 4, test: int = 10) -> dict:
    """``cifar-100-python/``: the images of ``build_cifar10`` in ``train`` and ``test``, with
    fine label 10 * (CIFAR-10 label) among the classes f0..f99 and coarse label fine // 5
    among c0..c19."""
    images, labels = cifar_sample(shared_data, per_class)
    fine = 10 * labels
    folder = raw_dir / "cifar-100-python"
    train = len(images) - test
    for split, rows in (("train", slice(0, train)), ("test", slice(train, None))):
        write_pickle(folder / split, {b"data": planes(images[rows]),
                                      b"fine_labels": fine[rows].tolist(),
                                      b"coarse_labels": (fine[rows] // 5).tolist()})
    write_pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                   b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    return {}


def build_svhn(raw_dir: Path, shared_data: Path, per_class: int = 4, test: int = 10) -> dict:
    """``train_32x32.mat`` and ``test_32x32.mat`` of the images of ``build_cifar10``, the
    CIFAR-10 labels 0..9 standing in for the digits (digit 0 stored as 10, as in SVHN)."""
    images, labels = cifar_sample(shared_data, per_class)
    raw_dir.mkdir(parents=True, exist_ok=True)
    train = len(images) - test
    for name, rows in (("train_32x32.mat", slice(0, train)),
                       ("test_32x32.mat", slice(train, None))):
        official = np.where(labels[rows] == 0, 10, labels[rows]).astype(np.uint8)[:, None]
        savemat(raw_dir / name, {"X": images[rows].transpose(1, 2, 3, 0), "y": official})
    return {}


def build_tinyimagenet(raw_dir: Path, shared_data: Path, train_per_class: int = 4) -> dict:
    """``tiny-imagenet-200/`` with the classes ``WNIDS``: ``train_per_class`` train and 2 val
    images each (val labelled ``TINY_VAL_LABELS``), real CIFAR-10 images of the first classes
    upscaled to 64x64 JPEGs; the first train image is greyscale."""
    root = raw_dir / "tiny-imagenet-200"
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("".join(f"{wnid}\t{CIFAR10_CLASSES[i]}\n"
                                            for i, wnid in enumerate(WNIDS)))
    held_out = {}  # label -> its val images
    for label, wnid in enumerate(WNIDS):
        images = [Image.fromarray(image).resize((64, 64), Image.Resampling.BICUBIC) for image in
                  cifar_images(shared_data, CIFAR10_CLASSES[label], train_per_class + 2)]
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for k, image in enumerate(images[:train_per_class]):
            image.save(folder / f"{wnid}_{k}.JPEG", quality=90)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        held_out[label] = images[train_per_class:]
    first = root / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_0.JPEG"
    with Image.open(first) as image:
        image.convert("L").save(first)
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for k, label in enumerate(TINY_VAL_LABELS):
        held_out[label].pop(0).save(root / "val" / "images" / f"val_{k}.JPEG", quality=90)
        lines.append(f"val_{k}.JPEG\t{WNIDS[label]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return {}


def write_folder(root: Path, images: np.ndarray, classes: list, suffix: str = ".png") -> None:
    """Save image i of ``images`` as ``root/<classes[i]>/<i:03d><suffix>``."""
    for i, (image, name) in enumerate(zip(images, classes)):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / name / f"{i:03d}{suffix}")


def build_imagefolder(raw_dir: Path, shared_data: Path, classes=("cat", "dog"),
                      per_class: int = 8) -> dict:
    """``raw_dir/<class>/*.png``: ``per_class`` real CIFAR-10 images of each of ``classes``
    (shuffled, numbered across classes); a quarter of each class is held out for testing."""
    images, labels = cifar_sample(shared_data, per_class, classes)
    write_folder(raw_dir, images, [classes[label] for label in labels])
    return {"test_fraction": 0.25}


# Audio --------------------------------------------------------------------------------------

def fsdd_recordings(shared_data: Path, digits: int = 3, speakers=SPEAKERS, takes: int = 4):
    """{(digit, speaker, take): path} of the shared FSDD clips of digits 0..``digits - 1``
    spoken by ``speakers``, takes 0..``takes - 1``."""
    folder = shared(shared_data, "fsdd/recordings")
    return {(d, s, t): folder / f"{d}_{s}_{t}.wav"
            for d in range(digits) for s in speakers for t in range(takes)}


def pcm16(path: Path) -> np.ndarray:
    """An FSDD clip as float samples, read by scipy (independently of kdpipe's reader)."""
    rate, samples = wavfile.read(path)
    assert rate == FSDD_RATE and samples.dtype == np.int16
    return samples.astype(np.float32) / 32768


def build_speechcommands(raw_dir: Path, shared_data: Path, features: str = "waveform",
                         digits: int = 3, speakers=SPEAKERS, takes: int = 4) -> dict:
    """``speech_commands_v0.02/``: the FSDD clips as ``<word>/<speaker>_nohash_<take>.wav``
    (16 kHz 16-bit), take 0 in ``testing_list.txt``, take 1 in ``validation_list.txt``, the
    other takes train; plus ``_background_noise_/`` and a README. ``features``: the option."""
    root = raw_dir / "speech_commands_v0.02"
    lists = {"testing_list.txt": [], "validation_list.txt": []}
    for (d, s, t), source in fsdd_recordings(shared_data, digits, speakers, takes).items():
        relative = f"{WORDS[d]}/{s}_nohash_{t}.wav"
        (root / WORDS[d]).mkdir(parents=True, exist_ok=True)
        soundfile.write(root / relative, resample_poly(pcm16(source), 2, 1), 16000, "PCM_16")
        if t == 0:
            lists["testing_list.txt"].append(relative)
        elif t == 1:
            lists["validation_list.txt"].append(relative)
    for name, lines in lists.items():
        (root / name).write_text("\n".join(lines) + "\n")
    (root / "_background_noise_").mkdir()
    noise = np.random.default_rng(0).uniform(-0.1, 0.1, 32000)
    soundfile.write(root / "_background_noise_" / "white_noise.wav", noise, 16000, "PCM_16")
    (root / "README.md").write_text("Speech Commands fixture\n")
    return {"features": features}


def urbansound_clips(recordings: dict) -> list[dict]:
    """The metadata rows of the UrbanSound8K fixture of ``recordings`` (sorted), each with its
    FSDD ``source`` file. Clip i is encoded as ``ENCODINGS[i % 5]``; take 0 is fold 10, takes
    1-2 fold 1, takes 3-4 fold 2, and so on; classIDs run backwards over the digits (neither
    digit nor name order, so that a mapping by either fails)."""
    digits = 1 + max(d for d, _, _ in recordings)
    rows = []
    for i, ((d, s, t), source) in enumerate(sorted(recordings.items())):
        fold = 10 if t == 0 else 1 + (t - 1) // 2
        rows.append({"slice_file_name": f"{i}-{d}-{t}-0.wav", "fsID": i, "start": 0.0,
                     "end": 1.0, "salience": 1, "fold": fold, "classID": digits - 1 - d,
                     "class": WORDS[d], "source": source})
    return rows


def build_urbansound8k(raw_dir: Path, shared_data: Path, digits: int = 3, speakers=SPEAKERS,
                       takes: int = 4) -> dict:
    """``UrbanSound8K/``: ``metadata/UrbanSound8K.csv`` and ``audio/fold1..10/`` holding the
    clips of ``urbansound_clips``, resampled to their encodings' rates. The options ask for 1 s
    clips: FSDD clips are shorter, and the default 4 s would be mostly padding."""
    root = raw_dir / "UrbanSound8K"
    for fold in range(1, 11):
        (root / "audio" / f"fold{fold}").mkdir(parents=True)
    (root / "metadata").mkdir()
    rows = urbansound_clips(fsdd_recordings(shared_data, digits, speakers, takes))
    for i, row in enumerate(rows):
        rate, subtype, channels = ENCODINGS[i % len(ENCODINGS)]
        samples = resample_poly(pcm16(row["source"]), rate // np.gcd(rate, FSDD_RATE),
                                FSDD_RATE // np.gcd(rate, FSDD_RATE))
        if channels == 2:
            samples = np.stack([samples, 0.5 * samples], axis=1)
        folder = root / "audio" / f"fold{row['fold']}"
        soundfile.write(folder / row["slice_file_name"], samples, rate, subtype)
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["slice_file_name", "fsID", "start", "end", "salience", "fold",
                                    "classID", "class"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return {"seconds": 1.0}


def build_audiofolder(raw_dir: Path, shared_data: Path, digits: int = 3, speakers=SPEAKERS,
                      takes: int = 4) -> dict:
    """``raw_dir/<word>/<speaker>_<take>.wav``: the FSDD clips as they are (8 kHz 16-bit); a
    quarter of each class is held out for testing."""
    for (d, s, t), source in fsdd_recordings(shared_data, digits, speakers, takes).items():
        (raw_dir / WORDS[d]).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, raw_dir / WORDS[d] / f"{s}_{t}.wav")
    return {"test_fraction": 0.25}


# Text ---------------------------------------------------------------------------------------

def build_shakespeare(raw_dir: Path, shared_data: Path, context: int = 32, stride: int = 16384,
                      test_fraction: float = 0.001) -> dict:
    """``input.txt``: the official file itself (acquire verifies its sha256, so an excerpt
    will not do). The default options make a small set of it: 69 train windows, one every
    16,384 characters of the play, and 34 test windows of its last 1,115 characters."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared(shared_data, "tinyshakespeare/input.txt"), raw_dir / "input.txt")
    return {"context": context, "stride": stride, "test_fraction": test_fraction}


def build_textfile(raw_dir: Path, shared_data: Path, characters: int = 3000,
                   context: int = 32) -> dict:
    """``raw_dir/excerpt.txt``: the first ``characters`` characters of Tiny Shakespeare (with
    the defaults, 84 train and 9 test windows; the test text's characters all occur in the
    train text, as the family requires)."""
    text = shared(shared_data, "tinyshakespeare/input.txt").read_text(encoding="utf-8")
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / "excerpt.txt"
    path.write_text(text[:characters], encoding="utf-8")
    return {"path": str(path), "context": context}


FIXTURES = {
    "cifar10": build_cifar10,
    "cifar100": build_cifar100,
    "svhn": build_svhn,
    "tinyimagenet": build_tinyimagenet,
    "imagefolder": build_imagefolder,
    "speechcommands": build_speechcommands,
    "urbansound8k": build_urbansound8k,
    "audiofolder": build_audiofolder,
    "shakespeare": build_shakespeare,
    "textfile": build_textfile,
}
