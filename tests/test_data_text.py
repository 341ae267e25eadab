"""Character-level families on the real Tiny Shakespeare text and on small UTF-8 files."""
import hashlib

import pytest
import torch
from fixtures import shared

from kdpipe import data
from kdpipe.data import DataError, text


@pytest.fixture(scope="module")
def shakespeare_dir(shared_data):
    """The shared folder of the official Tiny Shakespeare input.txt, read in place."""
    return shared(shared_data, "tinyshakespeare/input.txt").parent


def decode(ids, classes):
    return "".join(classes[i] for i in ids.tolist())


def test_tinyshakespeare_file_is_the_official_one(shakespeare_dir):
    raw = (shakespeare_dir / "input.txt").read_bytes()
    assert len(raw) == 1_115_394
    assert hashlib.sha256(raw).hexdigest() == text.SHAKESPEARE_SHA256


def test_shakespeare_windows_split_and_vocabulary(shakespeare_dir):
    corpus = (shakespeare_dir / "input.txt").read_text(encoding="utf-8")
    prepared = text.shakespeare.prepare({"context": 32}, shakespeare_dir)
    classes = prepared["classes"]
    assert len(classes) == 65 and classes == sorted(set(corpus))
    assert prepared["meta"] == {"kind": "sequence", "context": 32, "stride": 32}

    split = len(corpus) - round(len(corpus) * 0.1)  # the last 10 % is the test text
    x_train, y_train = prepared["x_train"], prepared["y_train"]
    x_test, y_test = prepared["x_test"], prepared["y_test"]
    assert x_train.dtype == y_train.dtype == x_test.dtype == torch.int64
    assert x_train.shape == y_train.shape == ((split - 33) // 32 + 1, 32)
    assert x_test.shape == y_test.shape == ((len(corpus) - split - 33) // 32 + 1, 32)
    assert decode(x_train[0], classes) == corpus[:32]
    assert decode(y_train[0], classes) == corpus[1:33]  # x shifted by one
    assert decode(x_train[-1], classes) + decode(y_train[-1, -1:], classes) in corpus[:split]
    assert decode(x_test[0], classes) == corpus[split:split + 32]
    assert decode(x_test[1], classes) == corpus[split + 32:split + 64]  # no overlap
    assert torch.equal(y_test[:, :-1], x_test[:, 1:])


def test_textfile_stride_and_unicode(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("über café naïve " * 20, encoding="utf-8")  # 320 characters
    prepared = text.textfile.prepare({"path": str(path), "context": 16, "stride": 4,
                                      "test_fraction": 0.25}, tmp_path / "unused")
    assert prepared["classes"] == sorted(set("über café naïve "))
    assert prepared["x_train"].shape == ((240 - 17) // 4 + 1, 16)  # overlapping train windows
    assert prepared["x_test"].shape == ((80 - 17) // 16 + 1, 16)
    assert decode(prepared["x_train"][1], prepared["classes"]) == path.read_text()[4:20]


def test_text_errors(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("abcabcabcabcabcabcabcabcabcabcabcXYZ", encoding="utf-8")
    with pytest.raises(DataError, match="XYZ"):  # characters the train text lacks
        text.textfile.prepare({"path": str(path), "context": 4, "test_fraction": 0.25}, tmp_path)
    with pytest.raises(DataError, match="fewer than context"):
        text.textfile.prepare({"path": str(path), "context": 64}, tmp_path)
    with pytest.raises(DataError, match="unknown option.*block_size"):
        text.textfile.prepare({"path": str(path), "block_size": 4}, tmp_path)
    with pytest.raises(DataError, match="'stride'"):
        text.textfile.prepare({"path": str(path), "stride": 0}, tmp_path)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1") * 10)
    with pytest.raises(DataError, match="latin1.txt.*not UTF-8"):
        text.textfile.prepare({"path": str(latin1), "context": 4}, tmp_path)
    with pytest.raises(DataError, match="absent.txt"):
        text.textfile.acquire({"path": str(tmp_path / "absent.txt")}, tmp_path)
    with pytest.raises(DataError, match="input.txt"):  # shakespeare not acquired
        text.shakespeare.prepare({}, tmp_path)


def test_textfile_requires_path_and_shakespeare_takes_none(tmp_path):
    (tmp_path / "input.txt").write_text("abc" * 100, encoding="utf-8")
    for step in (data.family("textfile").prepare, data.family("textfile").acquire):
        with pytest.raises(DataError, match="textfile.*'path' is required"):
            step({"context": 4}, tmp_path)  # no fallback to raw_dir/input.txt
    with pytest.raises(DataError, match="shakespeare.*unknown option.*path"):
        data.family("shakespeare").prepare({"path": str(tmp_path / "input.txt")}, tmp_path)
    assert "path" not in data.family("shakespeare").DEFAULTS
    assert data.family("textfile").DEFAULTS["context"] == 256


def test_registry_prepare_and_load(shakespeare_dir, tmp_path):
    out = tmp_path / "shakespeare.pt"
    data.prepare("shakespeare", {"context": 128}, shakespeare_dir, out)
    dataset = data.load(out)
    assert dataset.num_classes == 65 and dataset.input_shape == (128,)
    assert dataset.meta["kind"] == "sequence"
    assert data.family("shakespeare") is text.shakespeare
    assert data.family("textfile") is text.textfile
