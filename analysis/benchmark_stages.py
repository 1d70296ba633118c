#!/usr/bin/python3
"""What each stage of a method costs per iteration next to the student alone.

    analysis/benchmark_stages.py [--teacher 26] [--student 14] [--method proposed] [--rounds 5]

Plans the method's real stage prototxts for CIFAR-10, swaps their Data layers
for an Input layer (with caffe_pb2) holding a batch of 128 real CIFAR-10 images
from ../shared when present (else generated ones: Caffe's cost does not depend on
pixel values), then times, side by side in interleaved rounds, one training
iteration (forward + backward) of every stage and of the student trained alone,
and the teacher's forward pass inside each stage (it has no backward pass).

Then the test passes of the stages that have them: one test batch (100 images)
forward with the teacher left out, as the stage nets run it, and with it put back
(netgen.in_every_phase), and what a training iteration costs with its share of
test passes counted, at the paper's schedule (scale 1) and at 1/16, from the
solvers planned for CIFAR-10's 10,000 test images.
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hintkd import engine  # noqa: E402

engine.use_system_python()

import numpy as np  # noqa: E402

from analysis.benchmark_engines import timed  # noqa: E402
from hintkd import datasets, lmdb_data, netgen, plan  # noqa: E402

SHARED_CIFAR = engine.REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
BATCH = 128  # the paper's CIFAR batch (sec. 3.1)
TEST_IMAGES = 10000  # CIFAR-10's test set, which sets test_iter and the floor under test_interval
SCALES = (1.0, 0.0625)
TEST_BATCH = 100


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
    print(f"{args.method}: teacher ResNet-{args.teacher}, student ResNet-{args.student}, CPU, "
          f"median of {args.rounds} interleaved rounds", flush=True)

    caffe = engine.import_caffe()
    caffe.set_mode_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, source = cifar_size_data(tmp / "data", BATCH)
        manifest = tmp / "data" / "manifest.json"  # plan the solvers of the real test set
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "test_count": TEST_IMAGES}))
        images = data.train_images[:BATCH].astype(np.float32) - np.float32(128)
        labels = data.train_labels[:BATCH].astype(np.float32)
        planned = {scale: [] for scale in SCALES}
        for scale in SCALES:
            for method in ("student", args.method):
                opts = plan.RunOptions("cifar10", args.teacher, args.student, method, tmp / "data",
                                       tmp / f"runs{scale}", nets=1, scale=scale)
                planned[scale] += [s for s in plan.plan(opts) if not s.name.startswith("teacher-")]
        solvers = {(label_of(stage), scale): solver_values(stage) for scale in SCALES for stage in planned[scale]}
        stages = {label_of(stage): (stage / "train_val.prototxt").read_text() for stage in planned[1.0]}
        train_nets = {label: input_net(caffe, text, tmp, caffe.TRAIN, images, labels)
                      for label, text in stages.items()}
        tested = [label for label in stages
                  if solvers[label, 1.0][0] and layer_span(train_nets[label], "teacher/")]
        test_nets = {}
        for label in tested:
            for kind, text in (("now", stages[label]), ("teacher kept", netgen.in_every_phase(stages[label]))):
                test_nets[label, kind] = input_net(caffe, text, tmp, caffe.TEST, images[:TEST_BATCH],
                                                   labels[:TEST_BATCH])
        times = {label: [] for label in train_nets}
        teacher_times = {label: [] for label in train_nets if layer_span(train_nets[label], "teacher/")}
        test_times = {key: [] for key in test_nets}
        for _ in range(args.rounds):
            for label, net in train_nets.items():
                times[label].append(timed(lambda: (net.forward(), net.backward()), args.iterations))
                if label in teacher_times:
                    first, last = layer_span(net, "teacher/")
                    teacher_times[label].append(timed(lambda: net.forward(start=first, end=last), args.iterations))
            for key, net in test_nets.items():
                test_times[key].append(timed(net.forward, args.iterations))

    median = {label: statistics.median(t) for label, t in times.items()}
    print(f"\none training iteration: batch {BATCH}, 32x32x3 ({source})")
    print(f"{'stage':<16} {'s/iter':>8} {'x student alone':>16} {'teacher share':>14}")
    for label in train_nets:
        share = (f"{statistics.median(teacher_times[label]) / median[label]:>13.0%}" if label in teacher_times
                 else f"{'-':>14}")
        print(f"{label:<16} {median[label]:>8.3f} {median[label] / median['student alone']:>16.2f} {share}")
    if tested:
        print(f"\ntest passes: one batch of {TEST_BATCH} forward; a training iteration with its share of the test "
              f"passes (test_iter x batch / test_interval) on {TEST_IMAGES:,} test images")
        print(f"{'stage':<16} {'teacher kept':>13} {'now':>8} {'ratio':>6}" + "".join(
            f" {'scale ' + format(scale, 'g') + ' kept':>16} {'now':>8} {'ratio':>6}" for scale in SCALES))
        for label in tested:
            kept, now = (statistics.median(test_times[label, kind]) for kind in ("teacher kept", "now"))
            line = f"{label:<16} {kept:>13.3f} {now:>8.3f} {kept / now:>6.2f}"
            for scale in SCALES:
                test_iter, interval = solvers[label, scale]
                with_kept, with_now = (median[label] + test_iter * t / interval for t in (kept, now))
                line += f" {with_kept:>16.3f} {with_now:>8.3f} {with_kept / with_now:>6.2f}"
            print(line)
    return 0


def label_of(stage):
    return "student alone" if stage.name.startswith("student-") else stage.name


def input_net(caffe, text, folder, phase, images, labels):
    """A stage net's text with its Data layers swapped for an Input layer holding these images."""
    path = folder / "benchmark.prototxt"
    path.write_text(netgen.with_input_layer(text, [len(images), 3, 32, 32]))
    net = caffe.Net(str(path), phase)
    net.blobs["data"].data[...] = images
    net.blobs["label"].data[...] = labels
    return net


def solver_values(stage):
    """(test_iter, test_interval) of a stage's solver; (0, 1) without test passes."""
    solver = netgen.validate((stage / "solver.prototxt").read_text(), "SolverParameter")
    return (solver.test_iter[0], solver.test_interval) if solver.test_interval else (0, 1)


if __name__ == "__main__":
    sys.exit(main())
