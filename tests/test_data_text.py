"""Character-level families on generated text (tests/fixtures.py) and on small UTF-8 files."""
import hashlib
import urllib.request

import pytest
import torch
from fixtures import build_shakespeare, synthetic_text

from kdpipe import data
from kdpipe.data import DataError, text


@pytest.fixture(scope="module")
def shakespeare_dir(tmp_path_factory):
    """A raw folder whose input.txt is ``synthetic_text(40_000)``, not the official file."""
    raw = tmp_path_factory.mktemp("shakespeare")
    build_shakespeare(raw)
    return raw


def decode(ids, classes):
    return "".join(classes[i] for i in ids.tolist())


def test_shakespeare_acquire_keeps_a_verified_copy_and_refuses_another_file(shakespeare_dir,
                                                                            monkeypatch):
    def refuse(url, *args, **kwargs):
        raise AssertionError(f"acquire tried to download {url}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match="input.txt: sha256 is .*not the official one"):
        text.shakespeare.acquire({}, shakespeare_dir)
    digest = hashlib.sha256((shakespeare_dir / "input.txt").read_bytes()).hexdigest()
    monkeypatch.setattr(text, "SHAKESPEARE_SHA256", digest)  # as if it were the official file
    text.shakespeare.acquire({}, shakespeare_dir)


def test_shakespeare_windows_split_and_vocabulary(shakespeare_dir):
    corpus = synthetic_text(40_000)
    prepared = text.shakespeare.prepare({"context": 32}, shakespeare_dir)
    split = len(corpus) - round(len(corpus) * 0.1)  # the last 10 % is the test text
    classes = prepared["classes"]
    assert classes == sorted(set(corpus[:split]))
    assert prepared["meta"] == {"kind": "sequence", "context": 32, "stride": 32}

    x_train, y_train = prepared["x_train"], prepared["y_train"]
    x_test, y_test = prepared["x_test"], prepared["y_test"]
    assert x_train.dtype == y_train.dtype == x_test.dtype == torch.int64
    assert x_train.shape == y_train.shape == ((split - 33) // 32 + 1, 32)
    assert x_test.shape == y_test.shape == ((len(corpus) - split - 33) // 32 + 1, 32)
    assert decode(x_train[0], classes) == corpus[:32]
    assert decode(y_train[0], classes) == corpus[1:33]  # x shifted by one
    last = len(x_train) - 1
    assert decode(x_train[-1], classes) == corpus[32 * last:32 * last + 32]
    assert decode(y_train[-1], classes) == corpus[32 * last + 1:32 * last + 33]
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
    corpus = synthetic_text(40_000)
    assert dataset.classes == sorted(set(corpus[:len(corpus) - 4000]))
    assert dataset.input_shape == (128,) and dataset.meta["kind"] == "sequence"
    assert decode(dataset.x_test[0], dataset.classes) == corpus[-4000:-4000 + 128]
    assert data.family("shakespeare") is text.shakespeare
    assert data.family("textfile") is text.textfile
