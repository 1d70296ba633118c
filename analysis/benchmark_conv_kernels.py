#!/usr/bin/python3
"""The 3x3 convolutions of a CIFAR ResNet, one pass at a time, through oneDNN's kernels
side by side: which library version and which algorithm the fast build should take.

    analysis/benchmark_conv_kernels.py [--rounds 3] [--reps 5] [--images 128] [--no-onednn3]

Columns, each timed in the same interleaved rounds (A B C D A B C D ...):
  2.6 direct     Debian's oneDNN 2.6 (libdnnl-dev, the fast build's), direct kernels
  2.6 winograd   the same library's Winograd F(4x4, 3x3) kernels
  3.2 direct     oneDNN 3.2 (PyPI's onednn-cpu-gomp 2023.2.0 with its -devel headers, pinned
                 by sha256 and fetched once into HINTKD_CACHE by engine/install_caffe.sh
                 --fetch-onednn3), direct kernels
  3.2 winograd   its Winograd kernels, where it has any
Rows: each 3x3 shape of a CIFAR ResNet and the small maps of one on 8x8 images, forward, backward-data and backward-weights on
the whole batch and every thread, then the weight gradient as the fast build takes it
(engine/patches/fast/07: a part of the batch on one thread, HINTKD_BATCH_PARTS parts).
Each cell is the best of --reps passes, the best over the rounds, in ms, with GFLOP/s
of the direct count (2 * images * out * in * 9 * out size^2) in brackets: Winograd
does fewer operations, so its rate can pass the machine's sgemm rate.

A program of analysis/conv_kernels.cpp is compiled against each library (g++, a few
seconds each) into a temporary folder; nothing is installed.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from analysis.benchmark_engines import sgemm_gflops  # noqa: E402
from hintkd import engine  # noqa: E402

SOURCE = ROOT / "analysis" / "conv_kernels.cpp"
# (output channels, input size, stride): a CIFAR ResNet's three stages and the two
# strided layers between them (each doubles the channels and halves the size), then
# the last two stages of a net on 8x8 images (the digits).
SHAPES = [(16, 32, 1), (32, 16, 1), (64, 8, 1), (32, 32, 2), (64, 16, 2), (32, 4, 1), (64, 2, 1)]
PASSES = ("forward", "backward_data", "backward_weights")
PART = "weight gradient, 1 part"


def onednn3():
    """oneDNN 3.2's headers and library, fetched and checked once by the engine's installer: (include, lib)."""
    root = Path(subprocess.run(["bash", str(engine.INSTALL_SCRIPT), "--fetch-onednn3"],
                               check=True, stdout=subprocess.PIPE, text=True).stdout.strip())
    return root / "include", root / "lib"


def compile_program(out, include=None, lib=None):
    command = ["g++", "-O2", "-std=c++17", str(SOURCE), "-o", str(out)]
    if include:
        # libdnnl.so.3 by its path, so that -ldnnl cannot pick Debian's 2.6
        command[1:1] = [f"-I{include}"]
        command += [str(lib / "libdnnl.so.3"), f"-Wl,-rpath,{lib}"]
    else:
        command += ["-ldnnl"]
    subprocess.run(command, check=True)
    return out


def timed(program, images, shape, algorithm, reps, threads):
    channels, size, stride = shape
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([str(program), str(images), str(channels), str(size), str(stride), algorithm, str(reps)],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out)


def in_channels(shape):
    """A strided layer doubles the channels (as conv_kernels.cpp makes it)."""
    channels, _, stride = shape
    return channels // 2 if stride == 2 else channels


def operations(images, shape):
    channels, size, stride = shape
    return 2 * images * channels * in_channels(shape) * 9 * (size // stride) ** 2


def label(shape):
    channels, size, stride = shape
    return f"{in_channels(shape)}->{channels} {size}x{size} s{stride}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--reps", type=int, default=5, help="passes timed per cell per round (the best kept)")
    parser.add_argument("--images", type=int, default=128, help="the batch")
    parser.add_argument("--parts", type=int, default=8, help="parts of the batch a weight gradient is taken in")
    parser.add_argument("--no-onednn3", action="store_true", help="leave oneDNN 3.2 out (nothing fetched)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.reps < 1 or args.images < args.parts or args.parts < 1:
        parser.error("--rounds and --reps at least 1, --images at least --parts, --parts at least 1")
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count())
    with tempfile.TemporaryDirectory() as tmp:
        programs = {"2.6": compile_program(Path(tmp) / "conv_kernels_2")}
        if not args.no_onednn3:
            programs["3.2"] = compile_program(Path(tmp) / "conv_kernels_3", *onednn3())
        columns = [(version, algorithm) for version in programs for algorithm in ("direct", "winograd")]
        part = args.images // args.parts
        best = {}  # (shape, pass, column): ms
        kernels = {}
        for round_ in range(args.rounds):
            for shape in SHAPES:
                for column in columns:
                    version, algorithm = column
                    # (images, threads, {row of the table: the pass it times})
                    for images, used, rows in ((args.images, threads, {p: p for p in PASSES}),
                                               (part, 1, {PART: "backward_weights"})):
                        result = timed(programs[version], images, shape, algorithm, args.reps, used)
                        for row, timed_pass in rows.items():
                            key = (shape, row, column)
                            if "unavailable" in result:
                                best[key], kernels[key] = None, "-"
                                continue
                            ms = result[timed_pass]
                            best[key] = ms if best.get(key) is None else min(best[key], ms)
                            kernels[key] = result["kernels"][PASSES.index(timed_pass)]
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        peak = sgemm_gflops()

    print(f"3x3 convolutions of a CIFAR ResNet, batch {args.images}, {threads} threads "
          f"(a weight gradient's part: {part} images, 1 thread); best of {args.rounds} interleaved rounds "
          f"of {args.reps} passes; ms (GFLOP/s of the direct count)")
    print(f"machine: sgemm (oneDNN 2.6, 2048^3) {peak:.0f} GFLOP/s")
    header = f"{'layer':<18} {'pass':<24}" + "".join(f"{v + ' ' + a:>16}" for v, a in columns)
    print(header + "   fastest")
    for shape in SHAPES:
        for row in (*PASSES, PART):
            images = args.images if row != PART else part
            cells, times = [], {}
            for column in columns:
                ms = best[(shape, row, column)]
                if ms is None:
                    cells.append(f"{'-':>16}")
                    continue
                times[column] = ms
                cells.append(f"{ms:>8.2f} ({operations(images, shape) / ms / 1e6:>4.0f})")
            fastest = min(times, key=times.get)
            print(f"{label(shape):<18} {row.replace('_', ' '):<24}" + "".join(cells) +
                  f"   {' '.join(fastest)} ({kernels[(shape, row, fastest)]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
