"""Shared fixtures: real Caffe, small datasets written in the official formats."""
import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
# Real data that ships with the tests (tests/data/README.md: sources, licences, checksums):
# the suite reads nothing outside the clone.
TEST_DATA = REPO / "tests" / "data"
MNIST = TEST_DATA / "mnist"  # the first 2,000 training and 1,000 test images, official IDX format
CIFAR10_JPEG = TEST_DATA / "cifar10-jpeg-subset.tar.gz"  # 100 training and 20 test JPEGs a class
CAFFE_LOGS = TEST_DATA / "caffe-logs"  # real Caffe logs written elsewhere
# The kept Table 1 studies at 1/16 (README section 3, docs/study-table1.md): the paper's depths, then smaller nets.
TABLE1_STUDIES = [REPO / "analysis" / "studies" / f"table1-cifar10-resnet{depths}-scale0.0625"
                  for depths in ("26to14", "14to8")]
sys.path.insert(0, str(REPO))

from analysis import reference_band  # noqa: E402
from hintkd import engine, lmdb_data  # noqa: E402


def run(args, check=True, env=None, **kwargs):
    """Runs a command with the repository importable; env adds variables."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    result = subprocess.run(args, capture_output=True, text=True, env=env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def python(*args, **kwargs):
    return run([engine.SYSTEM_PYTHON, *map(str, args)], **kwargs)


@pytest.fixture(scope="session")
def caffe():
    return engine.import_caffe()


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory):
    """scikit-learn's digits, prepared once for the whole test run."""
    folder = tmp_path_factory.mktemp("data") / "digits"
    python(REPO / "data_prep" / "prepare.py", "digits", "--out", folder)
    return folder


@pytest.fixture(scope="session")
def mnist_2k(tmp_path_factory):
    """The first 2,000 training and 1,000 test images of the real MNIST files."""
    folder = tmp_path_factory.mktemp("data") / "mnist"
    python(REPO / "data_prep" / "prepare.py", "mnist", "--source", MNIST, "--no-md5", "--out", folder)
    return folder


def random_images(rng, n, channels, size):
    return rng.randint(0, 256, size=(n, channels, size, size), dtype=np.uint8)


def write_cifar_archive(path, rng, per_batch=6, classes=10, cifar100=False, drop=(), top=None):
    """A CIFAR python archive in the official layout, with few images."""
    top = top or ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    label_key = b"fine_labels" if cifar100 else b"labels"
    names = ["train", "test"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    meta_name, names_key = ("meta", b"fine_label_names") if cifar100 else ("batches.meta", b"label_names")
    truth = {}
    with tarfile.open(path, "w:gz") as tar:
        def add(name, obj):
            if name in drop:
                return
            raw = pickle.dumps(obj)
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        add(meta_name, {names_key: [f"class{i}".encode() for i in range(classes)]})
        for name in names:
            images = random_images(rng, per_batch, 3, 32)
            labels = rng.randint(0, classes, size=per_batch).tolist()
            truth[name] = (images, labels)
            add(name, {b"data": images.reshape(per_batch, -1), label_key: labels})
    return truth


def idx_bytes(array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_folder(folder, rng, n_train=12, n_test=8, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": random_images(rng, n_train, 1, 28)[:, 0],
        "train-labels-idx1-ubyte": rng.randint(0, 10, size=n_train),
        "t10k-images-idx3-ubyte": random_images(rng, n_test, 1, 28)[:, 0],
        "t10k-labels-idx1-ubyte": rng.randint(0, 10, size=n_test),
    }
    for name, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


def write_image_folder(root, rng, classes=("cat", "dog"), per_class=3, size=32, splits=("train", "test")):
    from PIL import Image
    for split in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.randint(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def read_lmdb(folder, split):
    """(images N x C x H x W, labels) read back from a prepared LMDB."""
    import lmdb
    pb2 = engine.caffe_pb2()
    images, labels = [], []
    env = lmdb.open(str(Path(folder) / f"{split}_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        for _, value in txn.cursor():
            datum = pb2.Datum()
            datum.ParseFromString(value)
            images.append(np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width))
            labels.append(datum.label)
    env.close()
    return np.stack(images), np.array(labels)


def manifest(folder):
    return json.loads((Path(folder) / lmdb_data.MANIFEST).read_text())


SCALE = reference_band.SCALE  # the method tests' schedule, the one the reference band was measured at


def out_with_data(folder, data_dir, dataset="digits"):
    (folder / "data").mkdir(parents=True, exist_ok=True)
    if not (folder / "data" / dataset).exists():
        os.symlink(data_dir, folder / "data" / dataset)
    return folder


@pytest.fixture(scope="session")
def methods_out(tmp_path_factory, digits_data):
    """One output folder for every method run on digits (ResNet-14 -> 8), so the teacher
    is trained once; the report tests read the same runs."""
    return out_with_data(tmp_path_factory.mktemp("methods"), digits_data)
