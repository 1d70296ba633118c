"""Readers for the datasets of the paper, each returning uint8 NCHW arrays.

A source is the official archive (downloaded, or given as a file), the folder it
extracts to, or an image folder (train/<class>/*, test/<class>/*, optionally as
.tar.gz). Every problem with a source raises DataError with a one-line message.
"""
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hintkd import read_table

TABLE_PATH = Path(__file__).resolve().parent.parent / "data_prep" / "datasets.json"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm"}
GREY_MODES = {"1", "L", "I", "I;16", "F"}
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


class DataError(Exception):
    """A dataset source that cannot be used; the message names the problem."""


@dataclass
class Dataset:
    name: str
    classes: list
    train_images: np.ndarray  # uint8, N x C x H x W
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: dict = field(default_factory=dict)  # where it came from, with a checksum


def dataset_table():
    return read_table(TABLE_PATH)


def dataset_info(name):
    table = dataset_table()
    if name not in table:
        raise DataError(f"unknown dataset '{name}' (known: {', '.join(sorted(table))})")
    return table[name]


def file_digest(path, algorithm="sha256"):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load(name, source=None, download_dir=None, verify_md5=True, per_class=None):
    """Reads dataset `name` from `source` (a path), or downloads the official archive.

    Official archives and files are checked against their MD5; verify_md5=False
    accepts a modified copy in the official format. per_class (image folders
    only) keeps the first images of each class in each split, for a quick sample."""
    info = dataset_info(name)
    official = info["official"]
    if official["format"] == "sklearn-digits":
        if source:
            raise DataError("digits is bundled with scikit-learn and takes no --source")
        return _load_digits(official)
    if source is None:
        if official["format"] == "image-folder":
            raise DataError(f"dataset '{name}' needs --source PATH (an image folder or .tar.gz)")
        source = _download(name, official, download_dir)
    source = Path(source)
    if not source.exists():
        raise DataError(f"source not found: {source}")
    with _opened_source(source) as root:
        if _find_image_folder(root) is not None:
            data = _load_image_folder(root, name, per_class)
        elif official["format"] == "cifar-pickle":
            if verify_md5 and source.is_file() and file_digest(source, "md5") != official["md5"]:
                raise DataError(f"{name}: MD5 mismatch for {source} (expected {official['md5']} "
                                "of the official archive; --no-md5 accepts a modified copy)")
            data = _load_cifar(root, name, official)
        elif official["format"] == "mnist-idx":
            data = _load_mnist(root, name, official, verify_md5)
        else:
            raise DataError(f"{source} holds no train/<class>/ and test/<class>/ image folders")
    data.source = {"path": str(source.resolve()), "sha256": source_digest(source)}
    _check_shape(data, info)
    return data


def _check_shape(data, info):
    for split, images in (("train", data.train_images), ("test", data.test_images)):
        if len(images) == 0:
            raise DataError(f"{data.name}: the {split} split is empty")
        _, c, h, w = images.shape
        if info["image_size"] and (h, w) != (info["image_size"],) * 2:
            raise DataError(f"{data.name}: {split} images are {h}x{w}, expected "
                            f"{info['image_size']}x{info['image_size']}")
        if info["channels"] and c != info["channels"]:
            raise DataError(f"{data.name}: {split} images have {c} channels, expected {info['channels']}")
    if info["num_classes"] and len(data.classes) != info["num_classes"]:
        raise DataError(f"{data.name}: found {len(data.classes)} classes, expected {info['num_classes']}")
    for split, labels in (("train", data.train_labels), ("test", data.test_labels)):
        if labels.min() < 0 or labels.max() >= len(data.classes):
            raise DataError(f"{data.name}: {split} labels outside 0..{len(data.classes) - 1}")


def source_digest(source):
    """sha256 of an archive, or of a folder's files and their names."""
    if source.is_file():
        return file_digest(source)
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(source)).encode())
        digest.update(file_digest(path).encode())
    return digest.hexdigest()


class _opened_source:
    """A folder view of a source: the folder itself, or a .tar(.gz) read into memory."""

    def __init__(self, source):
        self.source = source

    def __enter__(self):
        if self.source.is_dir():
            return _DirRoot(self.source)
        try:
            return _TarRoot(tarfile.open(self.source))
        except ARCHIVE_ERRORS as e:
            raise DataError(f"cannot read archive {self.source}: {e}") from None

    def __exit__(self, *exc):
        return False


class _DirRoot:
    def __init__(self, path):
        self.path = path

    def files(self):
        return [str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file()]

    def read(self, relative):
        return (self.path / relative).read_bytes()


class _TarRoot:
    """Reads every file of the archive in one sequential pass: random access
    into a compressed tar would decompress it again for each file."""

    def __init__(self, tar):
        self.name = tar.name
        try:
            self.contents = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        except ARCHIVE_ERRORS as e:
            raise DataError(f"truncated or damaged archive {tar.name}: {e}") from None
        finally:
            tar.close()

    def files(self):
        return list(self.contents)

    def read(self, relative):
        return self.contents[relative]


def _find(root, basename):
    """The one file named `basename` (or basename.gz) anywhere below root."""
    hits = [f for f in root.files() if os.path.basename(f) in (basename, basename + ".gz")]
    if not hits:
        return None
    return sorted(hits, key=len)[0]


def _load_cifar(root, name, official):
    def unpickle(basename):
        path = _find(root, basename)
        if path is None:
            raise DataError(f"{name}: missing '{basename}' in the source (is it the official python archive?)")
        try:
            return pickle.loads(root.read(path), encoding="bytes")
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise DataError(f"{name}: '{basename}' is not a readable CIFAR batch: {e}") from None

    def split(batches):
        images, labels = [], []
        for basename in batches:
            batch = unpickle(basename)
            try:
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                labels.append(np.asarray(batch[official["label_key"].encode()], dtype=np.int64))
                images.append(data.reshape(len(data), 3, 32, 32))
            except (KeyError, ValueError) as e:
                raise DataError(f"{name}: '{basename}' does not hold CIFAR images and labels ({e})") from None
        return np.concatenate(images), np.concatenate(labels)

    meta = unpickle(official["meta"])
    classes = [c.decode() for c in meta[official["names_key"].encode()]]
    train_images, train_labels = split(official["train"])
    test_images, test_labels = split(official["test"])
    return Dataset(name, classes, train_images, train_labels, test_images, test_labels)


def _read_idx(raw, expected_dims, what):
    header = np.frombuffer(raw[:4], dtype=">u1") if len(raw) >= 4 else []
    if len(header) < 4 or header[0] or header[1] or header[2] != 8 or header[3] != expected_dims:
        raise DataError(f"{what} is not an IDX file of {expected_dims} dimension(s) of bytes")
    dims = np.frombuffer(raw[4:4 + 4 * expected_dims], dtype=">u4").astype(int)
    body = np.frombuffer(raw[4 + 4 * expected_dims:], dtype=np.uint8)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{what} is truncated: {body.size} bytes of {int(np.prod(dims))}")
    return body.reshape(dims)


def _load_mnist(root, name, official, verify_md5):
    arrays = {}
    for key, (basename, md5) in official["files"].items():
        path = _find(root, basename)
        if path is None:
            raise DataError(f"{name}: missing '{basename}' (or .gz) in the source")
        raw = root.read(path)
        if path.endswith(".gz"):
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as e:
                raise DataError(f"{name}: '{path}' is a damaged gzip file: {e}") from None
        if verify_md5 and hashlib.md5(raw).hexdigest() != md5:
            raise DataError(f"{name}: MD5 mismatch for '{basename}' (expected {md5} of the "
                            "official file; --no-md5 accepts a modified copy)")
        arrays[key] = _read_idx(raw, 3 if key.endswith("images") else 1, basename)
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DataError(f"{name}: {split} images and labels differ in count")
    return Dataset(name, [str(d) for d in range(10)],
                   arrays["train_images"][:, None], arrays["train_labels"].astype(np.int64),
                   arrays["test_images"][:, None], arrays["test_labels"].astype(np.int64))


def _find_image_folder(root):
    """The prefix under which train/<class>/<image> and test/<class>/<image> live, or None."""
    prefixes = {}
    for f in root.files():
        parts = Path(f).parts
        if len(parts) >= 3 and parts[-3] in ("train", "test") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
            prefixes.setdefault(str(Path(*parts[:-3])), set()).add(parts[-3])
    complete = [p for p, splits in prefixes.items() if splits == {"train", "test"}]
    if complete:
        return sorted(complete, key=len)[0]
    if prefixes:
        missing = {"train", "test"} - next(iter(prefixes.values()))
        raise DataError(f"image folder has no '{missing.pop()}' split")
    return None


def _load_image_folder(root, name, per_class=None):
    from PIL import Image, UnidentifiedImageError

    prefix = _find_image_folder(root)
    by_split = {"train": {}, "test": {}}
    for f in root.files():
        p = Path(f)
        if p.suffix.lower() in IMAGE_SUFFIXES and len(p.parts) >= 3 and str(Path(*p.parts[:-3])) == prefix:
            by_split[p.parts[-3]].setdefault(p.parts[-2], []).append(f)
    classes = sorted(by_split["train"])
    if sorted(by_split["test"]) != classes:
        raise DataError(f"{name}: train and test folders name different classes")
    arrays = {}
    for split, files in by_split.items():
        images, labels = [], []
        for label, cls in enumerate(classes):
            for f in sorted(files[cls])[:per_class]:
                try:
                    image = Image.open(io.BytesIO(root.read(f)))
                    image.load()
                except (UnidentifiedImageError, OSError) as e:
                    raise DataError(f"{name}: cannot decode image {f}: {e}") from None
                array = np.asarray(image.convert("L" if image.mode in GREY_MODES else "RGB"))
                if images and array.shape != images[0].shape:
                    raise DataError(f"{name}: image {f} is {array.shape[1]}x{array.shape[0]}, "
                                    f"others are {images[0].shape[1]}x{images[0].shape[0]}")
                images.append(array)
                labels.append(label)
        stacked = np.stack(images)
        arrays[split] = (stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2),
                         np.asarray(labels, dtype=np.int64))
    return Dataset(name, classes, *arrays["train"], *arrays["test"])


def _load_digits(official):
    from sklearn import __version__ as sklearn_version
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.rint(digits.images * 255.0 / 16.0), 0, 255).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    is_test = np.arange(len(labels)) % official["test_every"] == 0  # 300 test images
    return Dataset("digits", [str(d) for d in range(10)],
                   images[~is_test], labels[~is_test], images[is_test], labels[is_test],
                   {"path": f"sklearn {sklearn_version} load_digits()",
                    "sha256": hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()})


def _download(name, official, download_dir):
    """Downloads the official files into download_dir and checks their MD5."""
    target = Path(download_dir)
    target.mkdir(parents=True, exist_ok=True)
    if official["format"] == "mnist-idx":
        urls = [official["url"] + basename + ".gz" for basename, _ in official["files"].values()]
        folder = target / f"{name}-official"
        folder.mkdir(exist_ok=True)
        for url in urls:
            _fetch(url, folder / os.path.basename(url), md5=None)
        return folder  # MNIST is checked file by file on its decompressed bytes
    path = target / os.path.basename(official["url"])
    _fetch(official["url"], path, md5=official["md5"])
    return path


def _fetch(url, path, md5):
    if path.exists() and (md5 is None or file_digest(path, "md5") == md5):
        return
    partial = path.with_name(path.name + ".partial")
    print(f"data_prep: downloading {url}", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot download {url}: {e}; pass --source PATH to a copy on disk") from None
    if md5 and file_digest(partial, "md5") != md5:
        partial.unlink()
        raise DataError(f"MD5 mismatch for {url} (expected {md5})")
    partial.rename(path)
