#!/usr/bin/env python3
"""Makes the real data the tests read (tests/data/) from the full public data.

    python3 tests/data/make_subsets.py FULL_DATA_FOLDER

FULL_DATA_FOLDER holds mnist/ (the four official IDX files, .gz or not),
cifar10-jpeg.tar.gz (CIFAR-10 as an image folder: cifar10-jpeg/{train,test}/<class>/*.jpg)
and caffe-logs/ (the Caffe logs named in README.md). The output is byte-for-byte the
same on every run (gzip and tar headers carry no time, owner or order of their own),
so `git status` after a run shows whether the shipped files are still what this
script makes. SHA256SUMS lists every file it writes.
"""
import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# The first images of each split, in the official order (the tests' mnist_2k fixture).
MNIST_KEEP = {"train": 2000, "t10k": 1000}
# The first images of each class, sorted by file name: what --train-limit 1000 and
# --test-limit 200 keep of the whole folder (first of each class in turn).
CIFAR_KEEP = {"train": 100, "test": 20}
CAFFE_LOGS = ["resnet-20__2016-08-14_00-25-56", "resnet-20__2018-10-19_01-43-18",
              "resnet-32__2018-10-19_01-44-03", "resnet-56__2018-10-23_12-27-50"]


def fixed_gzip(raw):
    """gzip bytes without a timestamp or file name, so a rerun writes the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as f:
        f.write(raw)
    return buffer.getvalue()


def read_idx(folder, basename):
    for path in (folder / f"{basename}.gz", folder / basename):
        if path.exists():
            raw = path.read_bytes()
            return gzip.decompress(raw) if path.suffix == ".gz" else raw
    sys.exit(f"make_subsets: no {basename} (or .gz) in {folder}")


def mnist(source, out):
    official = json.loads((REPO / "data_prep" / "datasets.json").read_text())["mnist"]["official"]["files"]
    out.mkdir(parents=True, exist_ok=True)
    for basename, md5 in official.values():
        raw = read_idx(source, basename)
        if hashlib.md5(raw).hexdigest() != md5:
            sys.exit(f"make_subsets: {basename} in {source} is not the official file (MD5 {md5})")
        split, kind = basename.split("-")[0], basename.split("-")[1]
        keep = MNIST_KEEP[split]
        dims = 3 if kind == "images" else 1
        header = bytearray(raw[:4 + 4 * dims])
        header[4:8] = keep.to_bytes(4, "big")  # the item count; rows and columns stay
        item = 784 if kind == "images" else 1
        body = raw[len(header):len(header) + keep * item]
        (out / f"{basename}.gz").write_bytes(fixed_gzip(bytes(header) + body))


def cifar10_jpeg(source, out_archive):
    kept = []
    with tarfile.open(source) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        by_class = {}
        for name in members:
            parts = Path(name).parts
            if len(parts) == 4 and parts[1] in CIFAR_KEEP:
                by_class.setdefault((parts[1], parts[2]), []).append(name)
        if len({cls for _, cls in by_class}) != 10:
            sys.exit(f"make_subsets: {source} is not CIFAR-10 as cifar10-jpeg/{{train,test}}/<class>/*.jpg")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as subset:
            for (split, cls), names in sorted(by_class.items()):
                for name in sorted(names)[:CIFAR_KEEP[split]]:
                    raw = tar.extractfile(members[name]).read()
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(raw), 0o644, 0
                    subset.addfile(info, io.BytesIO(raw))
                    kept.append(name)
    out_archive.write_bytes(fixed_gzip(buffer.getvalue()))
    return kept


def caffe_logs(source, out):
    out.mkdir(parents=True, exist_ok=True)
    for log in CAFFE_LOGS:
        shutil.copyfile(source / f"{log}.log.gz", out / f"{log}.log.gz")


def write_sums(root):
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("SHA256SUMS", "README.md")
                   and p.suffix != ".py" and "__pycache__" not in p.parts)
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root)}" for p in files]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("full", type=Path, help="folder with mnist/, cifar10-jpeg.tar.gz and caffe-logs/")
    args = parser.parse_args()
    mnist(args.full / "mnist", HERE / "mnist")
    kept = cifar10_jpeg(args.full / "cifar10-jpeg.tar.gz", HERE / "cifar10-jpeg-subset.tar.gz")
    caffe_logs(args.full / "caffe-logs", HERE / "caffe-logs")
    write_sums(HERE)
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    print(f"make_subsets: wrote tests/data ({len(kept)} CIFAR-10 JPEGs, {sum(MNIST_KEEP.values())} MNIST images, "
          f"{len(CAFFE_LOGS)} Caffe logs; {total / 1e6:.2f} MB in all)")


if __name__ == "__main__":
    main()
