#!/usr/bin/python3
"""Writes a dataset as Caffe LMDBs with a manifest.

    data_prep/prepare.py DATASET [--source PATH] [--out DIR]

DATASET is one of data_prep/datasets.json (cifar10, cifar100, mnist, digits,
folder). Without --source the official archive is downloaded and its MD5
checked; --source takes the archive, the folder it extracts to, or an image
folder (train/<class>/*, test/<class>/*, also as .tar.gz).
"""
import argparse
import fcntl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hintkd import engine  # noqa: E402

engine.use_system_python()

from hintkd import datasets, lmdb_data  # noqa: E402


def show_progress(split, done, total):
    """A counter that rewrites itself on a terminal; only the last line in a log."""
    if sys.stdout.isatty() or done == total:
        end = "\n" if done == total else "\r"
        print(f"data_prep: {split}: {done}/{total} images", end=end, flush=True)


def check_same_source(manifest, out, source):
    """A prepared dataset is reused only for the source it was prepared from."""
    if not source:
        return
    prepared = manifest.get("source") or {}
    if prepared.get("sha256") != datasets.source_digest(Path(source)):
        raise datasets.DataError(
            f"{out} was prepared from {prepared.get('path', 'another source')} (sha256 "
            f"{str(prepared.get('sha256'))[:12]}...), and --source {source} differs from it: remove {out} "
            "or choose another --out")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--source", help="archive, extracted folder or image folder on disk")
    parser.add_argument("--out", help="dataset folder to write (default: runs/data/DATASET)")
    parser.add_argument("--download-dir", default=str(Path.home() / ".cache" / "hintkd" / "downloads"))
    parser.add_argument("--train-limit", type=int, help="keep N training images, the first of each class in turn")
    parser.add_argument("--test-limit", type=int, help="keep N test images, the first of each class in turn")
    parser.add_argument("--seed", type=int, default=0, help="seed of the one-time training shuffle")
    parser.add_argument("--no-md5", action="store_true", help="accept a modified copy of an official file")
    args = parser.parse_args(argv)
    out = Path(args.out or Path("runs") / "data" / args.dataset)
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    lock = open(lock_path, "a")  # two drivers on one output folder: one prepares
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        if args.source and not Path(args.source).exists():
            raise datasets.DataError(f"--source {args.source} does not exist")
        if lmdb_data.is_prepared(out):
            manifest = lmdb_data.read_manifest(out)
            if manifest["dataset"] != args.dataset:
                raise datasets.DataError(f"{out} holds '{manifest['dataset']}', not '{args.dataset}'")
            check_same_source(manifest, out, args.source)
            print(f"data_prep: {out} is already prepared ({manifest['train_count']} train, "
                  f"{manifest['test_count']} test images)")
            return 0
        info = datasets.dataset_info(args.dataset)
        data = datasets.load(args.dataset, args.source, args.download_dir, verify_md5=not args.no_md5)
        manifest = lmdb_data.write_dataset(data, info, out, args.seed, args.train_limit, args.test_limit,
                                           progress=show_progress)
    except (datasets.DataError, engine.EngineError) as e:
        print(f"data_prep: error: {e}", file=sys.stderr)
        if not lmdb_data.is_prepared(out):  # bad input leaves nothing behind: the lock, the folders made
            lock_path.unlink(missing_ok=True)
            for folder in made:
                if folder.exists() and not any(folder.iterdir()):
                    folder.rmdir()
        return 1
    print(f"data_prep: wrote {out}: {manifest['train_count']} train and {manifest['test_count']} test "
          f"images, {manifest['num_classes']} classes, {manifest['image_size']}x{manifest['image_size']}"
          f"x{manifest['channels']} ({manifest['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
