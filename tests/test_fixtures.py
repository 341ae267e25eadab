"""Every family's fixture (tests/fixtures.py) passes the pipeline's data steps as the workflow
runs them: acquire finds the files in place, prepare and load give a small, usable data set."""
import hashlib
import urllib.request

import pytest
import torch
from fixtures import FIXTURES

import kdpipe.data
from kdpipe.data import text

FAMILIES = sorted(set(kdpipe.data.FAMILIES) - {"digits"})  # digits ships with scikit-learn


def test_every_family_but_digits_has_a_fixture():
    assert sorted(FIXTURES) == FAMILIES


@pytest.mark.parametrize("name, sizes", [pytest.param(name, {}, id=name) for name in FAMILIES] + [
    pytest.param("speechcommands", {"features": "logmel"}, id="speechcommands-logmel")])
def test_fixture_acquires_prepares_and_loads(name, sizes, tmp_path, monkeypatch):
    def refuse(url, *args, **kwargs):
        raise AssertionError(f"acquire tried to download {url}: the fixture's files are not "
                             "where the family looks")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    raw = tmp_path / "raw"
    options = FIXTURES[name](raw, **sizes)
    if name == "shakespeare":  # acquire verifies the official file's sha256; this text is not it
        digest = hashlib.sha256((raw / "input.txt").read_bytes()).hexdigest()
        monkeypatch.setattr(text, "SHAKESPEARE_SHA256", digest)
    kdpipe.data.acquire(name, options, raw)
    kdpipe.data.prepare(name, options, raw, tmp_path / "prepared.pt")
    dataset = kdpipe.data.load(tmp_path / "prepared.pt")

    assert 10 <= len(dataset.x_train) == len(dataset.y_train) <= 100  # tens of samples
    assert len(dataset.x_test) == len(dataset.y_test)
    assert dataset.x_test.shape[1:] == dataset.x_train.shape[1:]
    for y in (dataset.y_train, dataset.y_test):
        assert y.dtype == torch.int64 and 0 <= y.min() and y.max() < dataset.num_classes
    per_class = torch.bincount(dataset.y_test.flatten(), minlength=dataset.num_classes)
    assert (per_class >= 2).sum() >= 2  # two or more test samples of several classes
    for key in options.keys() & dataset.meta.keys():  # the options reached the prepared set
        assert dataset.meta[key] == options[key]
