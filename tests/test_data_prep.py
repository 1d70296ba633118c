"""data_prep: official formats in, Caffe LMDBs out; bad input stops cleanly."""
import gzip
import hashlib
import shutil
import tarfile

import numpy as np
import pytest

from conftest import (CIFAR10_JPEG, MNIST, REPO, TEST_DATA, manifest, python, read_lmdb, write_cifar_archive,
                      write_image_folder, write_mnist_folder)
from hintkd import datasets, lmdb_data

PREPARE = REPO / "data_prep" / "prepare.py"


def prepare(dataset, source, out, *extra, check=True):
    args = [PREPARE, dataset, "--out", out, *extra]
    if source is not None:
        args += ["--source", source]
    return python(*args, check=check)


def assert_nothing_written(out):
    assert not out.exists(), f"{out} was left behind"
    assert not list(out.parent.glob(out.name + ".tmp.*")), "a temporary folder was left behind"
    assert not (out.parent / f".{out.name}.lock").exists(), "the preparation lock was left behind"


def test_cifar10_archive_becomes_padded_shuffled_lmdb(tmp_path):
    rng = np.random.RandomState(1)
    truth = write_cifar_archive(tmp_path / "small-cifar10.tar.gz", rng)
    out = tmp_path / "cifar10"
    prepare("cifar10", tmp_path / "small-cifar10.tar.gz", out, "--no-md5")

    m = manifest(out)
    assert (m["train_count"], m["test_count"], m["num_classes"]) == (30, 6, 10)
    assert (m["image_size"], m["channels"], m["train_pad"], m["mirror"]) == (32, 3, 4, True)
    assert m["source"]["sha256"] == hashlib.sha256((tmp_path / "small-cifar10.tar.gz").read_bytes()).hexdigest()

    train_images = np.concatenate([truth[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = np.concatenate([truth[f"data_batch_{i}"][1] for i in range(1, 6)])
    mean = train_images.reshape(30, 3, -1).mean(axis=(0, 2))
    assert np.allclose(m["mean"], mean, atol=1e-3)

    images, labels = read_lmdb(out, "train")
    assert images.shape == (30, 3, 40, 40)
    order = np.random.RandomState(0).permutation(30)
    assert np.array_equal(images[:, :, 4:36, 4:36], train_images[order])
    assert np.array_equal(labels, train_labels[order])
    border = images[:, :, :4, :].transpose(1, 0, 2, 3).reshape(3, -1)
    assert np.array_equal(border, np.repeat(np.rint(mean).astype(np.uint8)[:, None], border.shape[1], axis=1))

    test_images, test_labels = read_lmdb(out, "test")
    assert np.array_equal(test_images, truth["test_batch"][0])  # unpadded, in order
    assert test_labels.tolist() == truth["test_batch"][1]


def test_cifar100_extracted_folder(tmp_path):
    rng = np.random.RandomState(2)
    write_cifar_archive(tmp_path / "c100.tar.gz", rng, per_batch=5, classes=100, cifar100=True)
    with tarfile.open(tmp_path / "c100.tar.gz") as tar:
        tar.extractall(tmp_path / "extracted")
    out = tmp_path / "cifar100"
    prepare("cifar100", tmp_path / "extracted", out)  # a folder has no archive MD5
    m = manifest(out)
    assert (m["train_count"], m["test_count"], m["num_classes"]) == (5, 5, 100)
    assert m["classes"][:2] == ["class0", "class1"]


def test_shuffle_is_fixed_by_the_seed(tmp_path):
    rng = np.random.RandomState(3)
    write_cifar_archive(tmp_path / "a.tar.gz", rng)
    for name in ("one", "two"):
        prepare("cifar10", tmp_path / "a.tar.gz", tmp_path / name, "--no-md5")
    assert np.array_equal(read_lmdb(tmp_path / "one", "train")[1], read_lmdb(tmp_path / "two", "train")[1])


def test_real_mnist_idx_files(tmp_path):
    out = tmp_path / "mnist"
    prepare("mnist", MNIST, out, "--no-md5", "--train-limit", "500", "--test-limit", "100")
    m = manifest(out)
    assert (m["train_count"], m["test_count"], m["image_size"], m["channels"]) == (500, 100, 28, 1)
    assert m["mean"] is None and m["scale"] == pytest.approx(1 / 256)
    test_images, test_labels = read_lmdb(out, "test")
    # The official test labels begin 7 2 1 0 4 1 4 9 5 9.
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    with gzip.open(MNIST / "t10k-images-idx3-ubyte.gz") as f:
        first = np.frombuffer(f.read()[16:16 + 784], np.uint8).reshape(28, 28)
    assert np.array_equal(test_images[0, 0], first)


def test_generated_mnist_needs_no_md5_flag(tmp_path):
    rng = np.random.RandomState(4)
    arrays = write_mnist_folder(tmp_path / "src", rng, gz=False)
    result = prepare("mnist", tmp_path / "src", tmp_path / "refused", check=False)
    assert result.returncode == 1
    assert "MD5 mismatch for 'train-images-idx3-ubyte'" in result.stderr
    assert_nothing_written(tmp_path / "refused")

    prepare("mnist", tmp_path / "src", tmp_path / "mnist", "--no-md5")
    images, labels = read_lmdb(tmp_path / "mnist", "test")
    assert np.array_equal(images[:, 0], arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(labels, arrays["t10k-labels-idx1-ubyte"])


def test_image_folder_tarball(tmp_path):
    rng = np.random.RandomState(5)
    root = write_image_folder(tmp_path / "pets" / "pets", rng)
    with tarfile.open(tmp_path / "pets.tar.gz", "w:gz") as tar:
        tar.add(root, arcname="pets")
    out = tmp_path / "folder"
    prepare("folder", tmp_path / "pets.tar.gz", out)
    m = manifest(out)
    assert m["classes"] == ["cat", "dog"] and (m["train_count"], m["test_count"]) == (6, 6)
    assert (m["image_size"], m["channels"], m["train_pad"]) == (32, 3, 0)


def test_digits_split_is_fixed(digits_data):
    m = manifest(digits_data)
    assert (m["train_count"], m["test_count"], m["image_size"], m["channels"]) == (1497, 300, 8, 1)
    from sklearn.datasets import load_digits
    _, labels = read_lmdb(digits_data, "test")
    assert np.array_equal(labels, load_digits().target[::6])


@pytest.mark.parametrize("case", ["md5", "truncated", "missing-split", "wrong-size", "unknown", "no-test-folder",
                                  "not-found"])
def test_bad_input_stops_with_one_line_and_writes_nothing(tmp_path, case):
    rng = np.random.RandomState(6)
    dataset, source, expected = "cifar10", None, None
    if case == "md5":
        write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", rng)
        source, expected = tmp_path / "cifar-10-python.tar.gz", "MD5 mismatch"
    elif case == "truncated":
        write_cifar_archive(tmp_path / "whole.tar.gz", rng, per_batch=40)
        raw = (tmp_path / "whole.tar.gz").read_bytes()
        (tmp_path / "cut.tar.gz").write_bytes(raw[:len(raw) // 2])
        source, expected = tmp_path / "cut.tar.gz", "truncated or damaged archive"
    elif case == "missing-split":
        write_cifar_archive(tmp_path / "nosplit.tar.gz", rng, drop=("test_batch",))
        source, expected = tmp_path / "nosplit.tar.gz", "missing 'test_batch'"
    elif case == "wrong-size":
        write_image_folder(tmp_path / "small", rng, size=30)
        source, expected = tmp_path / "small", "images are 30x30, expected 32x32"
    elif case == "unknown":
        dataset, expected = "imagenet22k", "unknown dataset 'imagenet22k'"
    elif case == "no-test-folder":
        write_image_folder(tmp_path / "half", rng, splits=("train",))
        source, expected = tmp_path / "half", "has no 'test' split"
    elif case == "not-found":
        source, expected = tmp_path / "nowhere.tar.gz", "nowhere.tar.gz does not exist"
    out = tmp_path / "fresh" / "data" / dataset  # as run_stages.sh --out fresh lays it out
    extra = () if case == "md5" else ("--no-md5",)
    result = prepare(dataset, source, out, *extra, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("data_prep: error:") and expected in lines[0], result.stderr
    assert_nothing_written(out)
    assert not (tmp_path / "fresh").exists()  # nor the folders made for it


def test_interrupted_write_leaves_no_prepared_folder(tmp_path, monkeypatch):
    """A failure in the middle of writing (here: the test split) keeps the folder absent."""
    rng = np.random.RandomState(7)
    write_cifar_archive(tmp_path / "a.tar.gz", rng)
    data = datasets.load("cifar10", tmp_path / "a.tar.gz", verify_md5=False)

    def failing_progress(split, done, total):
        if split == "test":
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        lmdb_data.write_dataset(data, datasets.dataset_info("cifar10"), tmp_path / "c", progress=failing_progress)
    assert_nothing_written(tmp_path / "c")


def test_real_cifar10_jpeg_folder_reads_as_cifar10(tmp_path):
    """The real JPEG re-encoding of CIFAR-10 (an image folder) gives CIFAR-10's layout."""
    data = datasets.load("cifar10", CIFAR10_JPEG)
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert data.train_images.shape == (1000, 3, 32, 32) and data.test_images.shape == (200, 3, 32, 32)
    assert np.bincount(data.train_labels).tolist() == [100] * 10 and np.bincount(data.test_labels).tolist() == [20] * 10
    assert data.train_images.std() > 40  # real photographs, not a flat fill


def test_the_shipped_data_is_what_its_readme_lists():
    """Every file under tests/data is in SHA256SUMS with its digest, and every listed file
    is there: a subset changed by hand, or made again differently, fails here."""
    listed = dict(reversed(line.split("  ", 1)) for line in (TEST_DATA / "SHA256SUMS").read_text().splitlines())
    present = {str(p.relative_to(TEST_DATA)) for p in TEST_DATA.rglob("*") if p.is_file()
               and p.name not in ("SHA256SUMS", "README.md", "make_subsets.py") and "__pycache__" not in p.parts}
    assert set(listed) == present
    for name, digest in listed.items():
        assert datasets.file_digest(TEST_DATA / name) == digest, name
    readme = (TEST_DATA / "README.md").read_text()
    assert all(top in readme for top in {name.split("/")[0] for name in listed})


def test_the_mnist_subset_is_the_official_files_first_images(tmp_path):
    """The shipped MNIST files are the official ones cut short: their headers give the
    kept counts, the official first training labels, and the MD5 check refuses them as
    the official files unless --no-md5 says so."""
    data = datasets.load("mnist", MNIST, verify_md5=False)
    assert (len(data.train_labels), len(data.test_labels)) == (2000, 1000)
    assert data.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    result = prepare("mnist", MNIST, tmp_path / "refused", check=False)
    assert result.returncode == 1 and "MD5 mismatch" in result.stderr and "--no-md5" in result.stderr


def test_prepared_folder_is_reused_not_rewritten(tmp_path, digits_data):
    copy = tmp_path / "digits"
    shutil.copytree(digits_data, copy)
    before = (copy / "manifest.json").stat().st_mtime_ns
    result = prepare("digits", None, copy)
    assert "already prepared" in result.stdout
    assert (copy / "manifest.json").stat().st_mtime_ns == before


def test_a_limit_keeps_every_class_of_a_folder_sorted_by_class(tmp_path):
    """An image folder lists one class after another: a limit takes the first of each class
    in turn, so a small subset of the CIFAR-10 JPEG folder is not one class alone."""
    rng = np.random.RandomState(5)
    write_image_folder(tmp_path / "src", rng, classes=("ant", "bee", "cat"), per_class=4)
    prepare("folder", tmp_path / "src", tmp_path / "out", "--train-limit", "7", "--test-limit", "3")
    train_labels, test_labels = read_lmdb(tmp_path / "out", "train")[1], read_lmdb(tmp_path / "out", "test")[1]
    assert sorted(np.bincount(train_labels).tolist()) == [2, 2, 3]
    assert sorted(test_labels.tolist()) == [0, 1, 2]
