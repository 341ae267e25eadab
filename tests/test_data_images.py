"""Image families on synthetic images written in the official on-disk layouts (tests/fixtures.py):
every pixel, label, class name and split checked against what the writer put in."""
import numpy as np
import pytest
import torch
from fixtures import (CIFAR10_CLASSES, TINY_VAL_LABELS, WNIDS, build_cifar10, build_cifar100,
                      build_imagefolder, build_svhn, build_tinyimagenet, cifar100_names,
                      image_sample, tiny_images, write_cifar10, write_folder)
from PIL import Image

import kdpipe.data
from kdpipe.data import DataError, family


@pytest.fixture(scope="module")
def sample():
    """The 40 images of the CIFAR and SVHN fixtures (4 per class, shuffled) and their labels."""
    return image_sample(4, 10)


def as_chw(images):
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


@pytest.fixture
def cifar10_dir(tmp_path):
    """The last 10 images of ``sample`` in test_batch, the first 30 in data_batch_1..5."""
    build_cifar10(tmp_path)
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


def test_cifar10_class_names_come_from_batches_meta_in_its_order(tmp_path, sample):
    names = [f"kind {9 - i}" for i in range(10)]  # neither the official names nor sorted
    write_cifar10(tmp_path, *sample, test=10, classes=names)
    assert family("cifar10").prepare({}, tmp_path)["classes"] == names


def test_normalisation_is_the_train_channel_mean_and_std(cifar10_dir, sample):
    data = family("cifar10").prepare({}, cifar10_dir)
    stats = data["meta"]["normalize"]
    pixels = sample[0][:30].astype(np.float64).reshape(-1, 3) / 255  # the written train images
    assert stats["mean"] == pytest.approx(pixels.mean(0).tolist(), abs=1e-12)
    assert stats["std"] == pytest.approx(pixels.std(0).tolist(), abs=1e-12)


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


@pytest.mark.parametrize("label", ["fine", "coarse"])
def test_cifar100_fine_and_coarse_labels(tmp_path, sample, label):
    images, labels = sample
    build_cifar100(tmp_path)
    fine = 10 * labels  # the fixture's fine label of each image
    data = family("cifar100").prepare({"label": label}, tmp_path)
    expected = fine if label == "fine" else fine // 5
    assert data["y_train"].tolist() == expected[:30].tolist()
    assert data["y_test"].tolist() == expected[30:].tolist()
    assert data["classes"] == cifar100_names()[0 if label == "fine" else 1]
    assert torch.equal(data["x_train"], as_chw(images[:30]))
    assert torch.equal(data["x_test"], as_chw(images[30:]))


@pytest.fixture
def svhn_dir(tmp_path):
    build_svhn(tmp_path)  # the images of ``sample``, their labels as the digits
    return tmp_path


def test_svhn_maps_label_10_to_digit_0(svhn_dir, sample):
    images, labels = sample
    assert 0 in labels[:30] and 0 in labels[30:]  # stored as 10 in both files
    data = family("svhn").prepare({}, svhn_dir)
    assert data["x_train"].shape == (30, 3, 32, 32) and data["x_train"].dtype == torch.uint8
    assert torch.equal(data["x_train"], as_chw(images[:30]))
    assert torch.equal(data["x_test"], as_chw(images[30:]))
    assert data["y_train"].tolist() == labels[:30].tolist()
    assert data["y_test"].tolist() == labels[30:].tolist()
    assert data["classes"] == [str(d) for d in range(10)]


def test_svhn_missing_or_corrupt_mat_is_a_data_error(svhn_dir):
    mat = svhn_dir / "test_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:120])  # not even a header
    with pytest.raises(DataError, match="test_32x32.mat: unreadable"):
        family("svhn").prepare({}, svhn_dir)
    mat.unlink()
    with pytest.raises(DataError, match="test_32x32.mat: missing"):
        family("svhn").prepare({}, svhn_dir)


@pytest.fixture
def tiny_dir(tmp_path):
    """3 classes x (4 train + 2 val) JPEGs of ``tiny_images``; the first train image is grey."""
    build_tinyimagenet(tmp_path)
    return tmp_path


def test_tinyimagenet_labels_follow_wnids_txt_and_images_their_files(tiny_dir):
    train, val = tiny_images()
    data = family("tinyimagenet").prepare({}, tiny_dir)
    assert data["classes"] == WNIDS
    assert data["x_train"].shape == (12, 3, 64, 64) and data["x_train"].dtype == torch.uint8
    assert data["y_train"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data["x_test"].shape == (6, 3, 64, 64)
    assert data["y_test"].tolist() == list(TINY_VAL_LABELS)
    grey = data["x_train"][0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    # JPEG is lossy: each decoded image is close to the image written under its name, and
    # closer to it than to any other written image (files sorted by name within a class).
    written = [np.broadcast_to(image[..., None], (64, 64, 3)) if image.ndim == 2 else image
               for wnid in WNIDS for image in train[wnid]] + [image for image, _ in val]
    written = np.stack(written).transpose(0, 3, 1, 2).astype(np.float64)
    decoded = torch.cat([data["x_train"], data["x_test"]]).numpy().astype(np.float64)
    distance = np.abs(decoded[:, None] - written[None]).mean(axis=(2, 3, 4))
    assert (distance.diagonal() < 6).all()  # in levels of 255; distinct images differ by ~50
    assert (distance.argmin(axis=1) == np.arange(len(written))).all()


def test_tinyimagenet_missing_annotations_or_corrupt_jpeg_is_a_data_error(tiny_dir):
    root = tiny_dir / "tiny-imagenet-200"
    broken = root / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_2.JPEG"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=f"{WNIDS[1]}_2.JPEG: unreadable image"):
        family("tinyimagenet").prepare({}, tiny_dir)
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match="val_annotations.txt: missing"):
        family("tinyimagenet").prepare({}, tiny_dir)


PETS = ("cat", "dog")


@pytest.fixture
def folder_sample():
    """The 16 images of ``build_imagefolder``: 8 cats and 8 dogs, shuffled, with their names."""
    images, labels = image_sample(8, 2)
    return images, [PETS[label] for label in labels]


def test_imagefolder_stratified_split_is_seeded_and_exact(tmp_path, folder_sample):
    images, names = folder_sample
    build_imagefolder(tmp_path / "pets", PETS, per_class=8)
    options = {"root": str(tmp_path / "pets"), "test_fraction": 0.25, "split_seed": 0}
    data = family("imagefolder").prepare(options, tmp_path / "unused")
    assert data["classes"] == ["cat", "dog"]
    assert data["x_train"].shape == (12, 3, 32, 32) and data["x_test"].shape == (4, 3, 32, 32)
    assert data["y_test"].tolist() == [0, 0, 1, 1]  # stratified: 2 of 8 per class
    # every written image is in exactly one split, under the label of its class folder
    written = {(bytes(x.numpy()), PETS.index(name)) for x, name in zip(as_chw(images), names)}
    train = [(bytes(x.numpy()), y) for x, y in zip(data["x_train"], data["y_train"].tolist())]
    test = [(bytes(x.numpy()), y) for x, y in zip(data["x_test"], data["y_test"].tolist())]
    assert set(train) | set(test) == written and len(train) + len(test) == len(written)
    again = family("imagefolder").prepare(options, tmp_path / "unused")
    assert torch.equal(again["x_test"], data["x_test"])
    other = family("imagefolder").prepare({**options, "split_seed": 1}, tmp_path / "unused")
    assert not torch.equal(other["x_test"], data["x_test"])


def test_imagefolder_test_root_resize_and_grey(tmp_path, folder_sample):
    images, names = folder_sample
    write_folder(tmp_path / "train", images[:12], names[:12])
    write_folder(tmp_path / "test", images[12:], ["dog"] * 4)
    options = {"test_root": str(tmp_path / "test"), "size": 16, "grey": True}
    data = family("imagefolder").prepare(options, tmp_path / "train")  # root defaults to raw_dir
    assert data["x_train"].shape == (12, 1, 16, 16) and data["x_test"].shape == (4, 1, 16, 16)
    assert data["y_test"].tolist() == [1] * 4  # the label of 'dog' in root, not in test_root
    assert len(data["meta"]["normalize"]["mean"]) == 1
    # the grey 16x16 version of the first test image, made here with PIL's own conversions
    expected = Image.fromarray(images[12]).convert("L").resize((16, 16), Image.Resampling.BILINEAR)
    assert torch.equal(data["x_test"][0, 0], torch.from_numpy(np.array(expected)))
    write_folder(tmp_path / "test", images[:1], ["bird"])
    with pytest.raises(DataError, match="bird"):
        family("imagefolder").prepare(options, tmp_path / "train")


def test_imagefolder_reads_jpegs_too(tmp_path, folder_sample):
    images, names = folder_sample
    write_folder(tmp_path, images, names, suffix=".jpg")
    data = family("imagefolder").prepare({"test_fraction": 0.5}, tmp_path)
    assert data["x_train"].shape == (8, 3, 32, 32) and data["x_test"].shape == (8, 3, 32, 32)
    # JPEG is lossy: match each decoded image to the nearest written one, which must be close,
    # a different one each time, and of the class the image was labelled with
    decoded = torch.cat([data["x_train"], data["x_test"]]).double()
    distance = (decoded[:, None] - as_chw(images)[None].double()).abs().mean(dim=(2, 3, 4))
    nearest = distance.argmin(dim=1)
    assert (distance.min(dim=1).values < 12).all()  # quality 75: ~9 levels; distinct images ~50
    assert len(set(nearest.tolist())) == 16
    labels = torch.cat([data["y_train"], data["y_test"]]).tolist()
    assert [PETS[y] for y in labels] == [names[i] for i in nearest.tolist()]


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
