"""Image families: fixtures in the official on-disk layouts, built from real CIFAR-10 pixels."""
import pickle

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import kdpipe.data
from kdpipe.data import DataError, family

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


@pytest.fixture(scope="module")
def sample(shared_data):
    """40 real images uint8 [40, 32, 32, 3] (4 per class, shuffled) and their labels."""
    images, labels = [], []
    for label, name in enumerate(CIFAR10_CLASSES):
        for path in sorted((shared_data / "cifar10-jpeg-sample" / "test" / name).glob("*.jpg"))[:4]:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    order = np.random.default_rng(0).permutation(len(images))
    return np.stack(images)[order], np.asarray(labels)[order]


def write_pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def planes(images):
    """[N, 32, 32, 3] -> the official rows [N, 3072]: red, green, blue planes, row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def as_chw(images):
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


@pytest.fixture
def cifar10_dir(tmp_path, sample):
    images, labels = sample
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(5):  # 6 train images per batch, then 10 test images
        rows = slice(6 * i, 6 * i + 6)
        write_pickle(folder / f"data_batch_{i + 1}", {
            b"batch_label": f"training batch {i + 1} of 5".encode(),
            b"data": planes(images[rows]), b"labels": labels[rows].tolist()})
    write_pickle(folder / "test_batch", {b"data": planes(images[30:]),
                                         b"labels": labels[30:].tolist()})
    write_pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_CLASSES],
                                           b"num_cases_per_batch": 6, b"num_vis": 3072})
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
def test_cifar100_fine_and_coarse_labels(tmp_path, sample, label, num_classes):
    images, _ = sample
    fine = np.random.default_rng(1).integers(0, 100, len(images))
    folder = tmp_path / "cifar-100-python"
    for split, rows in (("train", slice(0, 30)), ("test", slice(30, None))):
        write_pickle(folder / split, {b"data": planes(images[rows]),
                                      b"fine_labels": fine[rows].tolist(),
                                      b"coarse_labels": (fine[rows] // 5).tolist()})
    write_pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                   b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    data = family("cifar100").prepare({"label": label}, tmp_path)
    expected = fine if label == "fine" else fine // 5
    assert data["y_train"].tolist() == expected[:30].tolist()
    assert data["y_test"].tolist() == expected[30:].tolist()
    assert len(data["classes"]) == num_classes and data["classes"][1] == label[0] + "1"
    assert torch.equal(data["x_test"], as_chw(images[30:]))


@pytest.fixture
def svhn_dir(tmp_path, sample):
    images, labels = sample  # CIFAR classes 0..9 stand in for the digits
    for name, rows in (("train_32x32.mat", slice(0, 30)), ("test_32x32.mat", slice(30, None))):
        digits = labels[rows]
        official = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]  # 0 is stored as 10
        scipy.io.savemat(tmp_path / name, {"X": images[rows].transpose(1, 2, 3, 0), "y": official})
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


WNIDS = ["n09999999", "n01111111", "n05555555"]  # deliberately not in alphabetical order


@pytest.fixture
def tiny_dir(tmp_path, sample):
    """3 classes x (4 train + 2 val) upscaled real images; the first train image is greyscale."""
    images, _ = sample
    root = tmp_path / "tiny-imagenet-200"
    (root / "wnids.txt").parent.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(WNIDS)))
    upscaled = iter(Image.fromarray(image).resize((64, 64), Image.Resampling.BICUBIC)
                    for image in images)
    for wnid in WNIDS:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for k in range(4):
            next(upscaled).save(folder / f"{wnid}_{k}.JPEG", quality=90)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    first = root / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_0.JPEG"
    with Image.open(first) as image:
        image.convert("L").save(first)
    (root / "val" / "images").mkdir(parents=True)
    val_wnids = [WNIDS[i] for i in (2, 0, 1, 1, 0, 2)]
    lines = []
    for k, wnid in enumerate(val_wnids):
        next(upscaled).save(root / "val" / "images" / f"val_{k}.JPEG", quality=90)
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
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


def write_folder(root, images, classes, suffix=".png"):
    for i, (image, name) in enumerate(zip(images, classes)):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / name / f"{i:03d}{suffix}")


@pytest.fixture
def folder_sample(sample):
    """16 real images filed alternately under the classes 'cat' and 'dog'."""
    images, _ = sample
    return images[:16], ["cat", "dog"] * 8


def test_imagefolder_stratified_split_is_seeded_and_exact(tmp_path, folder_sample):
    images, names = folder_sample
    write_folder(tmp_path / "pets", images, names)
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
