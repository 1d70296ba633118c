#!/usr/bin/python3
"""What each stage of a method costs per iteration next to the student alone.

    analysis/benchmark_stages.py [--teacher 26] [--student 14] [--method proposed] [--rounds 5]

Plans the method's real stage prototxts for CIFAR-10, swaps their Data layers
for an Input layer (with caffe_pb2) holding a batch of 128 real CIFAR-10 images
from ../shared when present (else generated ones: Caffe's cost does not depend on
pixel values), then times, side by side in interleaved rounds, one training
iteration (forward + backward) of every stage and of the student trained alone,
and the teacher's forward pass inside each stage (it has no backward pass).
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hintkd import engine  # noqa: E402

engine.use_system_python()

import numpy as np  # noqa: E402

from hintkd import datasets, lmdb_data, netgen, plan  # noqa: E402

SHARED_CIFAR = engine.REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
BATCH = 128  # the paper's CIFAR batch (sec. 3.1)


def cifar_size_data(folder, images):
    """A prepared CIFAR-10-shaped dataset; returns it and where its images came from."""
    if SHARED_CIFAR.exists():
        data, source = datasets.load("cifar10", SHARED_CIFAR, per_class=13), "real CIFAR-10 images"
    else:
        rng = np.random.RandomState(0)
        data = datasets.Dataset("cifar10", [str(i) for i in range(10)],
                                rng.randint(0, 256, (images, 3, 32, 32), dtype=np.uint8), rng.randint(0, 10, images),
                                rng.randint(0, 256, (100, 3, 32, 32), dtype=np.uint8), rng.randint(0, 10, 100))
        source = "generated 32x32 images"
    lmdb_data.write_dataset(data, datasets.dataset_info("cifar10"), folder, train_limit=images, test_limit=100)
    return data, source


def with_input_layer(train_val, shape):
    path = train_val.with_name("benchmark.prototxt")
    path.write_text(netgen.with_input_layer(train_val.read_text(), shape))
    return path


def layer_span(net, prefix):
    names = [name for name in net._layer_names if name.startswith(prefix)]
    return (names[0], names[-1]) if names else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=int, default=26)
    parser.add_argument("--student", type=int, default=14)
    parser.add_argument("--method", default="proposed")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--iterations", type=int, default=2, help="iterations timed per stage per round")
    args = parser.parse_args(argv)

    caffe = engine.import_caffe()
    caffe.set_mode_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, source = cifar_size_data(tmp / "data", BATCH)
        images = data.train_images[:BATCH].astype(np.float32) - np.float32(128)
        labels = data.train_labels[:BATCH].astype(np.float32)
        stages = []
        for method in ("student", args.method):
            opts = plan.RunOptions("cifar10", args.teacher, args.student, method, tmp / "data", tmp / "runs", nets=1)
            stages += [s for s in plan.plan(opts) if not s.name.startswith("teacher-")]
        nets = {}
        for stage in stages:
            label = "student alone" if stage.name.startswith("student-") else stage.name
            net = caffe.Net(str(with_input_layer(stage / "train_val.prototxt", [BATCH, 3, 32, 32])), caffe.TRAIN)
            net.blobs["data"].data[...] = images
            net.blobs["label"].data[...] = labels
            nets[label] = net
        times = {label: [] for label in nets}
        teacher_times = {label: [] for label in nets if layer_span(nets[label], "teacher/")}
        for _ in range(args.rounds):
            for label, net in nets.items():
                started = time.perf_counter()
                for _ in range(args.iterations):
                    net.forward()
                    net.backward()
                times[label].append((time.perf_counter() - started) / args.iterations)
                if label in teacher_times:
                    first, last = layer_span(net, "teacher/")
                    started = time.perf_counter()
                    for _ in range(args.iterations):
                        net.forward(start=first, end=last)
                    teacher_times[label].append((time.perf_counter() - started) / args.iterations)

    alone = statistics.median(times["student alone"])
    print(f"{args.method}: teacher ResNet-{args.teacher}, student ResNet-{args.student}, batch 128, "
          f"32x32x3 ({source}), CPU, median of {args.rounds} interleaved rounds")
    print(f"{'stage':<16} {'s/iter':>8} {'x student alone':>16} {'teacher share':>14}")
    for label in nets:
        per_iter = statistics.median(times[label])
        share = (f"{statistics.median(teacher_times[label]) / per_iter:>13.0%}" if label in teacher_times
                 else f"{'-':>14}")
        print(f"{label:<16} {per_iter:>8.3f} {per_iter / alone:>16.2f} {share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
