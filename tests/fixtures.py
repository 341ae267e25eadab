"""Tiny data sets in every family's official on-disk layout, written by the tests themselves.

Two layers:
- writers, ``write_<layout>(raw_dir, <content>)``, put the content they are given (images,
  clips, text) into a family's official files; benchmarks/bench_prepare.py writes its large
  synthetic data sets with them, and tests/test_data_real.py its sets of real data;
- builders, ``build_<family>(raw_dir, <sizes>) -> options``, write a small synthetic data set
  through a writer, exactly where the family's ``acquire`` and ``prepare`` look, and return the
  options a config would give the family for it. ``FIXTURES`` maps every family (except
  digits, which ships with scikit-learn) to its builder.

The content is synthetic and deterministic: smooth random images (``image_sample``), pure
tones (``speech_clips``, ``clip_tone``) and generated text (``synthetic_text``). A test calls
the same generators to know what the files hold, and checks the reader against that, never
against the reader itself. The defaults give tens of training samples and a test split with two
or more samples of several classes, so that the data tests run in seconds and a model trains an
epoch on any of them in well under a second.
"""
import csv
import pickle
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image
from scipy.io import savemat

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
WNIDS = ["n09999999", "n01111111", "n05555555"]  # deliberately not in alphabetical order
TINY_VAL_LABELS = (2, 0, 1, 1, 0, 2)  # the classes of val_0 .. val_5: neither grouped nor sorted

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEAKERS = ("3b4f8f2c", "0a7c2a8d")  # Speech Commands' hashed speaker ids; not in sorted order
# (rate Hz, soundfile subtype, channels): every reader path, cycled over the UrbanSound8K clips.
ENCODINGS = [(8000, "PCM_16", 1), (22050, "PCM_U8", 1), (44100, "PCM_24", 2),
             (48000, "FLOAT", 1), (11025, "PCM_32", 2), (16000, "PCM_16", 1)]
SYLLABLES = ("an", "be", "cor", "dro", "el", "fa", "gi", "ho", "is", "ju", "ka", "lo", "me",
             "no", "or", "pu", "qua", "ri", "st", "th", "u", "ve", "wi", "ys")
NAMES = ("ALONSO", "BEATRICE", "CORIN", "DROMIO")


# Content ------------------------------------------------------------------------------------

def smooth_images(rng, n: int, size: int, chunk: int = 4096) -> np.ndarray:
    """uint8 [n, size, size, 3]: random colours on an 8x8 grid, interpolated linearly to
    ``size`` x ``size``, plus a little noise: JPEGs of realistic size and decoding cost, whose
    compression changes a pixel by a few levels. ``chunk`` images at a time (bounded memory)."""
    weights = np.maximum(0, 1 - np.abs(np.linspace(0, 7, size)[:, None] - np.arange(8)))
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, chunk):
        coarse = rng.integers(0, 248, (min(chunk, n - start), 8, 8, 3)).astype(np.float32)
        smooth = np.einsum("wj,nhjc->nhwc", weights, np.einsum("hi,nijc->nhjc", weights, coarse))
        images[start:start + len(coarse)] = smooth + rng.integers(0, 8, smooth.shape)
    return images


def image_sample(per_class: int, num_classes: int, size: int = 32, seed: int = 0):
    """``per_class`` images of each of ``num_classes`` classes, shuffled: uint8 images
    [N, size, size, 3] and int64 labels [N]."""
    rng = np.random.default_rng(seed)
    images = smooth_images(rng, per_class * num_classes, size)
    labels = np.repeat(np.arange(num_classes), per_class)
    order = rng.permutation(len(images))
    return images[order], labels[order]


def tone(frequency: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    """float32 [round(seconds * rate)]: a sine of ``frequency`` Hz sampled at ``rate`` Hz."""
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def speech_clips(digits: int = 3, speakers=SPEAKERS, takes: int = 4) -> list[dict]:
    """One record per clip of the audio fixtures, digit by digit, speaker by speaker, take by
    take: ``digit``, ``word``, ``speaker``, ``take``, and its tone's ``frequency`` (Hz, unique to
    the clip) and ``seconds`` (0.6 s for take 0, 0.2 s more per take: take 3 lasts 1.2 s, longer
    than the 1 s clips of the fixtures' options, so it is cut; multiples of 0.2 s are whole
    numbers of samples at every rate of ``ENCODINGS``)."""
    return [{"digit": d, "word": WORDS[d], "speaker": s, "take": t,
             "frequency": 200.0 + 400 * d + 100 * k + 20 * t, "seconds": 0.6 + 0.2 * t}
            for d in range(digits) for k, s in enumerate(speakers) for t in range(takes)]


def clip_tone(clip: dict, rate: int) -> np.ndarray:
    """The samples of a ``speech_clips`` record at ``rate`` Hz."""
    return tone(clip["frequency"], clip["seconds"], rate)


def synthetic_text(characters: int, seed: int = 0, syllables=SYLLABLES) -> str:
    """``characters`` characters of a generated play: speeches of a name, a colon and lines of
    words made of ``syllables``, with punctuation; the same seed gives the same text."""
    rng = np.random.default_rng(seed)
    parts, length = [], 0
    while length < characters:
        lines = []
        for _ in range(rng.integers(1, 4)):
            words = ["".join(rng.choice(syllables, rng.integers(1, 4)))
                     for _ in range(rng.integers(3, 9))]
            lines.append(" ".join(words).capitalize() + str(rng.choice(list(".,;!?"))))
        speech = f"{rng.choice(NAMES)}:\n" + "\n".join(lines) + "\n\n"
        parts.append(speech)
        length += len(speech)
    return "".join(parts)[:characters]


# Writers: the official layouts ---------------------------------------------------------------

def write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def planes(images: np.ndarray) -> np.ndarray:
    """[N, 32, 32, 3] -> the official rows [N, 3072]: red, green, blue planes, row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10(raw_dir: Path, images: np.ndarray, labels, test: int,
                  classes=CIFAR10_CLASSES) -> None:
    """``cifar-10-batches-py/``: the last ``test`` of ``images`` (uint8 [N, 32, 32, 3]) and
    ``labels`` in ``test_batch``, the others, in order, spread over ``data_batch_1..5``;
    ``classes`` in ``batches.meta``."""
    folder = raw_dir / "cifar-10-batches-py"
    train = len(images) - test
    for i, rows in enumerate(np.array_split(np.arange(train), 5)):
        write_pickle(folder / f"data_batch_{i + 1}", {
            b"batch_label": f"training batch {i + 1} of 5".encode(),
            b"data": planes(images[rows]), b"labels": np.asarray(labels)[rows].tolist()})
    write_pickle(folder / "test_batch", {b"data": planes(images[train:]),
                                         b"labels": np.asarray(labels)[train:].tolist()})
    write_pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in classes],
                                           b"num_cases_per_batch": train // 5, b"num_vis": 3072})


def write_cifar100(raw_dir: Path, images: np.ndarray, fine, coarse, test: int, fine_names,
                   coarse_names) -> None:
    """``cifar-100-python/``: the last ``test`` images with their ``fine`` and ``coarse`` labels
    in ``test``, the others in ``train``; the class names of both in ``meta``."""
    folder = raw_dir / "cifar-100-python"
    train = len(images) - test
    for split, rows in (("train", slice(0, train)), ("test", slice(train, None))):
        write_pickle(folder / split, {b"data": planes(images[rows]),
                                      b"fine_labels": np.asarray(fine)[rows].tolist(),
                                      b"coarse_labels": np.asarray(coarse)[rows].tolist()})
    write_pickle(folder / "meta", {b"fine_label_names": [n.encode() for n in fine_names],
                                   b"coarse_label_names": [n.encode() for n in coarse_names]})


def write_svhn(raw_dir: Path, images: np.ndarray, digits, test: int) -> None:
    """``train_32x32.mat`` and ``test_32x32.mat`` (the last ``test`` images): X uint8
    [32, 32, 3, N], y uint8 [N, 1] with digit 0 stored as 10, as in SVHN."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    train = len(images) - test
    for name, rows in (("train_32x32.mat", slice(0, train)),
                       ("test_32x32.mat", slice(train, None))):
        digit = np.asarray(digits)[rows]
        savemat(raw_dir / name, {"X": np.ascontiguousarray(images[rows].transpose(1, 2, 3, 0)),
                                 "y": np.where(digit == 0, 10, digit).astype(np.uint8)[:, None]})


def write_tinyimagenet(raw_dir: Path, wnids: list, train, val) -> None:
    """``tiny-imagenet-200/``: ``wnids.txt`` and ``words.txt``; for each (wnid, images) of
    ``train``, ``train/<wnid>/images/<wnid>_<k>.JPEG`` and an empty ``<wnid>_boxes.txt``; for
    each (image, wnid) of ``val``, ``val/images/val_<k>.JPEG``, labelled in
    ``val/val_annotations.txt``. Images are uint8 [64, 64, 3] (RGB) or [64, 64] (grey), saved
    as JPEG at quality 90; ``train`` and ``val`` may be generators."""
    root = raw_dir / "tiny-imagenet-200"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{wnid}\tclass {i}\n" for i, wnid in enumerate(wnids)))
    for wnid, images in train:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for k, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{wnid}_{k}.JPEG", quality=90)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for k, (image, wnid) in enumerate(val):
        Image.fromarray(image).save(root / "val" / "images" / f"val_{k}.JPEG", quality=90)
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def write_folder(root: Path, images: np.ndarray, classes: list, suffix: str = ".png") -> None:
    """Save image i of ``images`` as ``root/<classes[i]>/<i:03d><suffix>``."""
    for i, (image, name) in enumerate(zip(images, classes)):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / name / f"{i:03d}{suffix}")


def write_speechcommands(raw_dir: Path, clips) -> None:
    """``speech_commands_v0.02/``: each (``<word>/<file>.wav``, float samples at 16 kHz,
    split) of ``clips`` as 16-bit PCM; the paths of split "testing" in ``testing_list.txt``,
    of "validation" in ``validation_list.txt`` ("train": in neither); 2 s of white noise in
    ``_background_noise_/``, and a README. ``clips`` may be a generator."""
    root = raw_dir / "speech_commands_v0.02"
    lists = {"testing": [], "validation": []}
    for relative, samples, split in clips:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(root / relative, samples, 16000, "PCM_16")
        if split != "train":
            lists[split].append(relative)
    for split, lines in lists.items():
        (root / f"{split}_list.txt").write_text("".join(f"{line}\n" for line in lines))
    (root / "_background_noise_").mkdir()
    noise = np.random.default_rng(0).uniform(-0.1, 0.1, 32000)
    soundfile.write(root / "_background_noise_" / "white_noise.wav", noise, 16000, "PCM_16")
    (root / "README.md").write_text("Speech Commands v0.02 layout\n")


def write_urbansound8k(raw_dir: Path, rows: list[dict]) -> None:
    """``UrbanSound8K/``: ``metadata/UrbanSound8K.csv`` of ``rows`` (their official columns)
    and each row's ``samples`` (float [n] or [n, channels]) at its ``rate`` and soundfile
    ``subtype`` in ``audio/fold<fold>/<slice_file_name>``; all ten fold folders exist."""
    root = raw_dir / "UrbanSound8K"
    for fold in range(1, 11):
        (root / "audio" / f"fold{fold}").mkdir(parents=True)
    (root / "metadata").mkdir()
    for row in rows:
        soundfile.write(root / "audio" / f"fold{row['fold']}" / row["slice_file_name"],
                        row["samples"], row["rate"], row["subtype"])
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["slice_file_name", "fsID", "start", "end", "salience", "fold",
                                    "classID", "class"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# Builders: small synthetic data sets ---------------------------------------------------------

def build_cifar10(raw_dir: Path, per_class: int = 4, test: int = 10) -> dict:
    """``image_sample(per_class, 10)``: its last ``test`` images in ``test_batch``, the others
    over ``data_batch_1..5``; the official class names."""
    write_cifar10(raw_dir, *image_sample(per_class, 10), test)
    return {}


def cifar100_names() -> tuple[list, list]:
    """The fixture's fine and coarse class names: f0..f99 and c0..c19 (not in sorted order)."""
    return [f"f{i}" for i in range(100)], [f"c{i}" for i in range(20)]


def build_cifar100(raw_dir: Path, per_class: int = 4, test: int = 10) -> dict:
    """The images of ``build_cifar10`` with fine label 10 * (its label) and coarse label
    fine // 5, in ``train`` and ``test``."""
    images, labels = image_sample(per_class, 10)
    write_cifar100(raw_dir, images, 10 * labels, 10 * labels // 5, test, *cifar100_names())
    return {}


def build_svhn(raw_dir: Path, per_class: int = 4, test: int = 10) -> dict:
    """The images of ``build_cifar10``, their labels 0..9 as the digits."""
    write_svhn(raw_dir, *image_sample(per_class, 10), test)
    return {}


def tiny_images(train_per_class: int = 4) -> tuple[dict, list]:
    """The fixture's TinyImageNet content: {wnid: its train images} and the val images with
    their labels ``TINY_VAL_LABELS``, uint8 [64, 64, 3]; the first train image is grey
    ([64, 64], the mean of its channels)."""
    images = smooth_images(np.random.default_rng(1), len(WNIDS) * train_per_class + 6, 64)
    train = {wnid: list(images[i * train_per_class:(i + 1) * train_per_class])
             for i, wnid in enumerate(WNIDS)}
    first = train[WNIDS[0]][0]
    train[WNIDS[0]][0] = first.mean(axis=2).round().astype(np.uint8)
    val = [(image, label) for image, label in
           zip(images[len(WNIDS) * train_per_class:], TINY_VAL_LABELS)]
    return train, val


def build_tinyimagenet(raw_dir: Path, train_per_class: int = 4) -> dict:
    """``tiny-imagenet-200/`` of ``tiny_images``: the classes ``WNIDS``, ``train_per_class``
    train and 2 val images each."""
    train, val = tiny_images(train_per_class)
    write_tinyimagenet(raw_dir, WNIDS, train.items(),
                       [(image, WNIDS[label]) for image, label in val])
    return {}


def build_imagefolder(raw_dir: Path, classes=("cat", "dog"), per_class: int = 8) -> dict:
    """``raw_dir/<class>/*.png``: ``image_sample(per_class, len(classes))`` (numbered across
    classes); a quarter of each class is held out for testing."""
    images, labels = image_sample(per_class, len(classes))
    write_folder(raw_dir, images, [classes[label] for label in labels])
    return {"test_fraction": 0.25}


def speechcommands_split(take: int) -> str:
    """The fixture's split of a take: 0 testing, 1 validation, the others train."""
    return {0: "testing", 1: "validation"}.get(take, "train")


def build_speechcommands(raw_dir: Path, features: str = "waveform", digits: int = 3,
                         speakers=SPEAKERS, takes: int = 4) -> dict:
    """``speech_commands_v0.02/`` of ``speech_clips``: ``<word>/<speaker>_nohash_<take>.wav``
    at 16 kHz, split by ``speechcommands_split``. ``features``: the option."""
    write_speechcommands(raw_dir, (
        (f"{c['word']}/{c['speaker']}_nohash_{c['take']}.wav", clip_tone(c, 16000),
         speechcommands_split(c["take"])) for c in speech_clips(digits, speakers, takes)))
    return {"features": features}


def urbansound_rows(digits: int = 3, speakers=SPEAKERS, takes: int = 4) -> list[dict]:
    """The metadata rows of the UrbanSound8K fixture, one per ``speech_clips`` record (kept in
    the row as ``clip``), with its samples: clip i is encoded as ``ENCODINGS[i % 6]`` (a second
    channel at half the amplitude); take 0 is fold 10, takes 1-2 fold 1, takes 3-4 fold 2, and
    so on; classIDs run backwards over the digits (neither digit nor name order, so that a
    mapping by either fails)."""
    rows = []
    for i, clip in enumerate(speech_clips(digits, speakers, takes)):
        rate, subtype, channels = ENCODINGS[i % len(ENCODINGS)]
        samples = clip_tone(clip, rate)
        if channels == 2:
            samples = np.stack([samples, 0.5 * samples], axis=1)
        rows.append({"slice_file_name": f"{i}-{clip['digit']}-{clip['take']}-0.wav", "fsID": i,
                     "start": 0.0, "end": clip["seconds"], "salience": 1,
                     "fold": 10 if clip["take"] == 0 else 1 + (clip["take"] - 1) // 2,
                     "classID": digits - 1 - clip["digit"], "class": clip["word"], "clip": clip,
                     "samples": samples, "rate": rate, "subtype": subtype})
    return rows


def build_urbansound8k(raw_dir: Path, digits: int = 3, speakers=SPEAKERS,
                       takes: int = 4) -> dict:
    """``UrbanSound8K/`` of ``urbansound_rows``. The options ask for 1 s clips: the tones are
    about that long, and the default 4 s would be mostly padding."""
    write_urbansound8k(raw_dir, urbansound_rows(digits, speakers, takes))
    return {"seconds": 1.0}


def build_audiofolder(raw_dir: Path, digits: int = 3, speakers=SPEAKERS,
                      takes: int = 4) -> dict:
    """``raw_dir/<word>/<speaker>_<take>.wav``: the ``speech_clips`` at 8 kHz, 16-bit; a
    quarter of each class is held out for testing."""
    for clip in speech_clips(digits, speakers, takes):
        (raw_dir / clip["word"]).mkdir(parents=True, exist_ok=True)
        soundfile.write(raw_dir / clip["word"] / f"{clip['speaker']}_{clip['take']}.wav",
                        clip_tone(clip, 8000), 8000, "PCM_16")
    return {"test_fraction": 0.25}


def build_shakespeare(raw_dir: Path, characters: int = 40_000, context: int = 32,
                      stride: int = 512, test_fraction: float = 0.05) -> dict:
    """``input.txt``: ``synthetic_text(characters)``, not the official file (whose sha256 the
    family's acquire verifies: a test of acquire patches the checksum). The default options
    make 75 train windows and 62 test windows (1,984 predicted test characters)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "input.txt").write_text(synthetic_text(characters), encoding="utf-8")
    return {"context": context, "stride": stride, "test_fraction": test_fraction}


UNICODE_SYLLABLES = SYLLABLES + ("é", "ñu", "ßa", "λο", "ø")


def build_textfile(raw_dir: Path, characters: int = 3000, context: int = 32) -> dict:
    """``raw_dir/play.txt``: ``synthetic_text(characters, 1, UNICODE_SYLLABLES)``, multi-byte
    UTF-8 characters among its words (with the defaults, 84 train and 9 test windows)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / "play.txt"
    path.write_text(synthetic_text(characters, 1, UNICODE_SYLLABLES), encoding="utf-8")
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
