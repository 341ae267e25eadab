"""Acquiring an archive: download with progress, checksum, safe extraction (a file:// URL)."""
import hashlib
import tarfile

import pytest

from kdpipe.data import DataError
from kdpipe.data.download import extract, fetch


def test_fetch_downloads_verifies_and_reports_progress(tmp_path, capsys):
    source = tmp_path / "archive.bin"
    source.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    checksum = "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    dest = fetch(source.as_uri(), tmp_path / "data" / "archive.bin", checksum)
    assert dest.read_bytes() == source.read_bytes()
    assert f"downloading {source.as_uri()}: 2/2 MiB (100%)" in capsys.readouterr().err
    with pytest.raises(DataError, match="md5 is .* expected 0000"):
        fetch(source.as_uri(), tmp_path / "other.bin", "md5:" + "0" * 32)


def test_extract_refuses_members_outside_the_folder(tmp_path):
    (tmp_path / "evil.txt").write_text("x")
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        tar.add(tmp_path / "evil.txt", arcname="../evil.txt")
    with pytest.raises(DataError, match="would extract outside"):
        extract(tmp_path / "evil.tar", tmp_path / "into")
