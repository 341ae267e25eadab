"""Image families: fixtures in the official on-disk layouts, built from real CIFAR-10 pixels."""
import numpy as np
import pytest
import torch
from fixtures import (CIFAR10_CLASSES, WNIDS, build_cifar10, build_cifar100, build_imagefolder,
                      build_svhn, build_tinyimagenet, cifar_sample, write_folder)
from PIL import Image

import kdpipe.data
from kdpipe.data import DataError, family


@pytest.fixture(scope="module")
def sample(shared_data):
    """The 40 real images of the CIFAR fixtures (4 per class, shuffled) and their labels."""
    return cifar_sample(shared_data)


def as_chw(images):
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


@pytest.fixture
def cifar10_dir(tmp_path, shared_data):
    """The last 10 images of ``sample`` in test_batch, the first 30 in data_batch_1..5."""
    build_cifar10(tmp_path, shared_data)
    return tmp_path


def test_cifar10_reads_the_official_batches_pixel_exact(cifar10_dir, sample):
    images, labels = sample
    data = family("cifar10").prepare({}, cifar10_dir)
    assert data["x_train"].shape == (30, 3, 32, 32) and data["x_train"].dtype == torch.uint8
    assert data["x_test"].shape == (10, 3, 32, 32)
    assert data["y_train"].dtype == torch.int64
    assert torch.equal(data["x_train"], as_chw(images[:30]))
    assert torch.equal(data["x_test"], as_chw(images[30:]))
    assert data["y_train"].tolist() == labels[:30].tolist()
    assert data["y_test"].tolist() == labels[30:].tolist()
    assert data["classes"] == CIFAR10_CLASSES


def test_normalisation_is_the_train_channel_mean_and_std(cifar10_dir):
    data = family("cifar10").prepare({}, cifar10_dir)
    stats = data["meta"]["normalize"]
    pixels = data["x_train"].double().div(255).transpose(0, 1).reshape(3, -1)
    assert stats["mean"] == pytest.approx(pixels.mean(1).tolist(), abs=1e-9)
    assert stats["std"] == pytest.approx(pixels.std(1, correction=0).tolist(), abs=1e-9)
    # natural photographs: mid-grey means and a broad spread (CIFAR-10: ~0.47, ~0.25)
    assert all(0.3 < m < 0.65 for m in stats["mean"])
    assert all(0.15 < s < 0.35 for s in stats["std"])


def test_prepared_file_loads_normalised(cifar10_dir, tmp_path):
    out = tmp_path / "cifar10.pt"
    kdpipe.data.prepare("cifar10", {}, cifar10_dir, out)
    dataset = kdpipe.data.load(out)
    assert dataset.num_classes == 10 and dataset.input_shape == (3, 32, 32)
    per_channel = dataset.x_train.transpose(0, 1).reshape(3, -1)
    assert per_channel.mean(1).abs().max() < 1e-4
    assert (per_channel.std(1, correction=0) - 1).abs().max() < 1e-4


def test_cifar_missing_or_truncated_batch_is_a_data_error(cifar10_dir):
    (cifar10_dir / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        family("cifar10").prepare({}, cifar10_dir)
    batch = cifar10_dir / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DataError, match="data_batch_2: corrupt pickle"):
        family("cifar10").prepare({}, cifar10_dir)


def test_cifar_options_are_checked(cifar10_dir):
    assert family("cifar10").DEFAULTS == {} and family("cifar100").DEFAULTS == {"label": "fine"}
    with pytest.raises(DataError, match="label"):
        family("cifar10").prepare({"label": "fine"}, cifar10_dir)
    with pytest.raises(DataError, match="'fine' or 'coarse'"):
        family("cifar100").prepare({"label": "medium"}, cifar10_dir)


@pytest.mark.parametrize("label, num_classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_fine_and_coarse_labels(tmp_path, shared_data, sample, label, num_classes):
    images, labels = sample
    build_cifar100(tmp_path, shared_data)
    fine = 10 * labels  # the fixture's fine label of each CIFAR-10 class
    data = family("cifar100").prepare({"label": label}, tmp_path)
    expected = fine if label == "fine" else fine // 5
    assert data["y_train"].tolist() == expected[:30].tolist()
    assert data["y_test"].tolist() == expected[30:].tolist()
    assert len(data["classes"]) == num_classes and data["classes"][1] == label[0] + "1"
    assert torch.equal(data["x_test"], as_chw(images[30:]))


@pytest.fixture
def svhn_dir(tmp_path, shared_data):
    build_svhn(tmp_path, shared_data)  # the images of ``sample``, CIFAR classes as the digits
    return tmp_path


def test_svhn_maps_label_10_to_digit_0(svhn_dir, sample):
    images, labels = sample
    assert 0 in labels[:30]
    data = family("svhn").prepare({}, svhn_dir)
    assert data["x_train"].shape == (30, 3, 32, 32) and data["x_train"].dtype == torch.uint8
    assert torch.equal(data["x_train"], as_chw(images[:30]))
    assert data["y_train"].tolist() == labels[:30].tolist()
    assert data["y_test"].tolist() == labels[30:].tolist()
    assert data["classes"] == [str(d) for d in range(10)]


def test_svhn_missing_or_corrupt_mat_is_a_data_error(svhn_dir):
    mat = svhn_dir / "test_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:500])
    with pytest.raises(DataError, match="test_32x32.mat: unreadable"):
        family("svhn").prepare({}, svhn_dir)
    mat.unlink()
    with pytest.raises(DataError, match="test_32x32.mat: missing"):
        family("svhn").prepare({}, svhn_dir)


@pytest.fixture
def tiny_dir(tmp_path, shared_data):
    """3 classes x (4 train + 2 val) upscaled real images; the first train image is greyscale."""
    build_tinyimagenet(tmp_path, shared_data)
    return tmp_path


def test_tinyimagenet_labels_follow_wnids_txt(tiny_dir):
    data = family("tinyimagenet").prepare({}, tiny_dir)
    assert data["classes"] == WNIDS
    assert data["x_train"].shape == (12, 3, 64, 64) and data["x_train"].dtype == torch.uint8
    assert data["y_train"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data["x_test"].shape == (6, 3, 64, 64)
    assert data["y_test"].tolist() == [2, 0, 1, 1, 0, 2]
    grey = data["x_train"][0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    val_3 = tiny_dir / "tiny-imagenet-200" / "val" / "images" / "val_3.JPEG"
    with Image.open(val_3) as image:
        assert torch.equal(data["x_test"][3], torch.from_numpy(np.array(image)).permute(2, 0, 1))


def test_tinyimagenet_missing_annotations_or_corrupt_jpeg_is_a_data_error(tiny_dir):
    root = tiny_dir / "tiny-imagenet-200"
    broken = root / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_2.JPEG"
    broken.write_bytes(broken.read_bytes()[:300])
    with pytest.raises(DataError, match=f"{WNIDS[1]}_2.JPEG: unreadable image"):
        family("tinyimagenet").prepare({}, tiny_dir)
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match="val_annotations.txt: missing"):
        family("tinyimagenet").prepare({}, tiny_dir)


PETS = ("cat", "dog")


@pytest.fixture
def folder_sample(shared_data):
    """The 16 real images of ``build_imagefolder``: 8 cats and 8 dogs, shuffled."""
    images, labels = cifar_sample(shared_data, 8, PETS)
    return images, [PETS[label] for label in labels]


def test_imagefolder_stratified_split_is_seeded_and_exact(tmp_path, shared_data,
                                                           folder_sample):
    images, _ = folder_sample
    build_imagefolder(tmp_path / "pets", shared_data, PETS, per_class=8)
    options = {"root": str(tmp_path / "pets"), "test_fraction": 0.25, "split_seed": 0}
    data = family("imagefolder").prepare(options, tmp_path / "unused")
    assert data["classes"] == ["cat", "dog"]
    assert data["x_train"].shape == (12, 3, 32, 32) and data["x_test"].shape == (4, 3, 32, 32)
    assert data["y_test"].tolist() == [0, 0, 1, 1]  # stratified: 2 of 8 per class
    all_images = {bytes(x.numpy()) for x in as_chw(images)}
    train = [bytes(x.numpy()) for x in data["x_train"]]
    test = [bytes(x.numpy()) for x in data["x_test"]]
    assert set(train) | set(test) == all_images and not set(train) & set(test)
    again = family("imagefolder").prepare(options, tmp_path / "unused")
    assert torch.equal(again["x_test"], data["x_test"])
    other = family("imagefolder").prepare({**options, "split_seed": 1}, tmp_path / "unused")
    assert not torch.equal(other["x_test"], data["x_test"])


def test_imagefolder_test_root_resize_and_grey(tmp_path, folder_sample):
    images, names = folder_sample
    write_folder(tmp_path / "train", images[:12], names[:12])
    write_folder(tmp_path / "test", images[12:], ["dog"] * 4, suffix=".jpg")
    options = {"test_root": str(tmp_path / "test"), "size": 16, "grey": True}
    data = family("imagefolder").prepare(options, tmp_path / "train")  # root defaults to raw_dir
    assert data["x_train"].shape == (12, 1, 16, 16) and data["x_test"].shape == (4, 1, 16, 16)
    assert data["y_test"].tolist() == [1] * 4  # the label of 'dog' in root, not in test_root
    assert len(data["meta"]["normalize"]["mean"]) == 1
    write_folder(tmp_path / "test", images[:1], ["bird"])
    with pytest.raises(DataError, match="bird"):
        family("imagefolder").prepare(options, tmp_path / "train")


def test_imagefolder_errors_name_the_file_or_option(tmp_path, folder_sample):
    images, names = folder_sample
    write_folder(tmp_path, images, names)
    with pytest.raises(DataError, match="colour"):
        family("imagefolder").prepare({"colour": "rgb"}, tmp_path)
    Image.fromarray(images[0]).resize((40, 40)).save(tmp_path / "dog" / "big.png")
    with pytest.raises(DataError, match="big.png: 40x40 pixels"):
        family("imagefolder").prepare({}, tmp_path)
    assert family("imagefolder").prepare({"size": [32, 32]}, tmp_path)["x_train"].shape[1:] == (
        3, 32, 32)
    (tmp_path / "cat" / "broken.jpeg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="broken.jpeg: unreadable image"):
        family("imagefolder").prepare({"size": 32}, tmp_path)


def test_channel_stats_in_chunks_match_a_float_computation(sample):
    images, _ = sample
    x = images.transpose(0, 3, 1, 2).copy()
    chunked = kdpipe.data.imagefolder.channel_stats(x, chunk=7)  # 40 images: 6 chunks, a partial
    pixels = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1) / 255
    np.testing.assert_allclose(chunked["mean"], pixels.mean(1), rtol=1e-12)
    np.testing.assert_allclose(chunked["std"], pixels.std(1), rtol=1e-12)


def test_imagefolder_split_too_small_for_its_classes_is_a_data_error(tmp_path, folder_sample):
    images, names = folder_sample
    write_folder(tmp_path, images, names)
    with pytest.raises(DataError, match="dataset 'imagefolder': cannot hold out test_fraction"):
        family("imagefolder").prepare({"test_fraction": 0.05}, tmp_path)  # 1 of 16 images, 2 classes
