"""Writes a Dataset as Caffe LMDBs (Datum records) plus a manifest, all or nothing.

Layout of a prepared dataset folder:
    train_lmdb/   shuffled once with a fixed seed; CIFAR images padded (below)
    test_lmdb/    official order, unpadded
    manifest.json classes, sizes, counts, per-channel mean, source checksum
The folder is assembled under a temporary name and renamed into place when
complete, so a folder with a manifest is always whole.
"""
import json
import os
import shutil
import time
from pathlib import Path

import lmdb
import numpy as np

from hintkd import engine
from hintkd.atomic import write_json

MANIFEST = "manifest.json"


def is_prepared(folder):
    return (Path(folder) / MANIFEST).exists()


def read_manifest(folder):
    return json.loads((Path(folder) / MANIFEST).read_text())


def pad_with_mean(images, pad, mean):
    """Pads N x C x H x W uint8 images by `pad` pixels filled with the rounded
    per-channel mean, so that after Caffe's mean subtraction the border is ~0,
    as with He et al.'s zero padding of normalised images."""
    if pad == 0:
        return images
    n, c, h, w = images.shape
    fill = np.rint(np.asarray(mean)).astype(np.uint8).reshape(1, c, 1, 1)
    padded = np.broadcast_to(fill, (n, c, h + 2 * pad, w + 2 * pad)).copy()
    padded[:, :, pad:pad + h, pad:pad + w] = images
    return padded


def _write_lmdb(path, images, labels, progress):
    pb2 = engine.caffe_pb2()
    n, c, h, w = images.shape
    env = lmdb.open(str(path), map_size=max(1 << 26, 2 * images.nbytes + n * 64), subdir=True)
    batch = 1000
    for start in range(0, n, batch):
        with env.begin(write=True) as txn:
            for i in range(start, min(n, start + batch)):
                datum = pb2.Datum(channels=c, height=h, width=w,
                                  data=images[i].tobytes(), label=int(labels[i]))
                txn.put(f"{i:08d}".encode(), datum.SerializeToString())
        progress(min(n, start + batch), n)
    env.close()


def first_of_each_class(labels, limit):
    """The indices of `limit` images (all if None), as many of each class as can be, each
    class's first ones, in source order: a source sorted by class (an image folder)
    still gives every class."""
    labels = np.asarray(labels)
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)  # the position of each image within its class
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where] = np.arange(len(where))
    return np.sort(np.lexsort((np.arange(len(labels)), rank))[:limit])


def write_dataset(data, info, folder, seed=0, train_limit=None, test_limit=None, progress=None):
    """Writes `data` (a datasets.Dataset) under `folder`; returns the manifest.
    progress(split, done, total) is called as records are written."""
    folder = Path(folder)
    if is_prepared(folder):
        raise FileExistsError(f"{folder} already holds a prepared dataset")
    keep = first_of_each_class(data.train_labels, train_limit)
    train_images, train_labels = data.train_images[keep], data.train_labels[keep]
    keep = first_of_each_class(data.test_labels, test_limit)
    test_images, test_labels = data.test_images[keep], data.test_labels[keep]
    order = np.random.RandomState(seed).permutation(len(train_images))
    train_images, train_labels = train_images[order], train_labels[order]
    mean = train_images.reshape(len(train_images), train_images.shape[1], -1).mean(axis=(0, 2))
    pad = info["train_pad"]

    for leftover in folder.parent.glob(f"{folder.name}.tmp.*"):  # from an interrupted run
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = folder.with_name(f"{folder.name}.tmp.{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        started = time.time()
        for split, images, labels in (("train", pad_with_mean(train_images, pad, mean), train_labels),
                                      ("test", test_images, test_labels)):
            _write_lmdb(tmp / f"{split}_lmdb", images, labels,
                        lambda done, total, split=split: progress and progress(split, done, total))
        manifest = {
            "dataset": data.name,
            "classes": data.classes,
            "num_classes": len(data.classes),
            "channels": int(test_images.shape[1]),
            "image_size": int(test_images.shape[2]),
            "train_pad": pad,
            "mirror": info["mirror"],
            "scale": info["scale"],
            "mean": [round(float(m), 4) for m in mean] if info["subtract_mean"] else None,
            "padding_holds": "the rounded per-channel mean (about 0 after mean subtraction)" if pad else None,
            "train_count": int(len(train_labels)),
            "test_count": int(len(test_labels)),
            "shuffle_seed": seed,
            "limits": {"train": train_limit, "test": test_limit},
            "source": data.source,
            "seconds": round(time.time() - started, 1),
        }
        write_json(tmp / MANIFEST, manifest)
        if folder.exists():  # an empty or unfinished folder from an earlier attempt
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
