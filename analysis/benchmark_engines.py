#!/usr/bin/python3
"""Training speed of the fast CPU build, the stock build and PyTorch on the same nets.

    analysis/benchmark_engines.py [--depths 8,20,32] [--rounds 3] [--steps 2] [--no-torch] [--portable]
                                  [--unfused] [--shared ResNet-20] [--layers] [--primitives]
                                  [--also NAME=PREFIX]

One whole training step (forward, backward, SGD update with momentum and weight
decay) at batch 128 of 32x32x3 images, for each 6n+2 ResNet as the planner
writes it for CIFAR-10 (conv-BN-Scale-ReLU, projection shortcuts, global
average pooling, FC, softmax loss), in:
  fast    this project's Caffe build (engine/install_caffe.sh)
  stock   the stock build (engine/install_caffe.sh --stock)
  portable  with --portable: the fast build without -march=native (HINTKD_PORTABLE=1,
          the images' build), to show what running on any x86-64 CPU costs
  unfused with --unfused: the fast build with HINTKD_FUSE=off (each BatchNorm's Scale and
          ReLU run as layers of their own), to show what running them fused gains
  NAME    with --also NAME=PREFIX: the Caffe build installed in PREFIX (e.g. one made before
          a change to engine/), to compare two builds of the engine side by side
  pytorch PyTorch CPU on the identical net (same layers, shortcuts, batch and
          thread count), installed from PyPI into the benchmark's own venv
          ($HINTKD_CACHE/bench-venv) on first use, never a toolkit dependency; in its
          default layout, and as a careful user runs it on a CPU:
  pytorch-cl  with channels_last (model and batch), the layout Intel and PyTorch advise
          for CPU training
  pytorch-compile  channels_last and torch.compile (left out, saying why, where it does
          not run); "fast/best pytorch" compares with the fastest of the three.
Each engine runs in a worker process of its own that keeps its nets loaded; the
rounds interleave engines and nets, each round starting with another engine, so that the
machine's drift hits all alike.
Also measured in the same rounds: the machine's sgemm rate (oneDNN's sgemm,
2048^3, all threads), against which each engine's FLOP rate is a share, and the
teacher's share of a Stage 2 step (proposed, --stage2 teacher,student depths)
in both Caffe builds. Every engine uses OMP_NUM_THREADS threads (all cores by
default).

With --layers, each Caffe build's time per layer, forward and backward, on every
net in every round (as `caffe time`, but without the backward passes training
skips), summed by layer type: where a step's time goes. In the fast build a
BatchNorm's time includes the Scale and ReLU it runs (HINTKD_FUSE, docs/engine.md).

With --primitives, after the rounds, each build on oneDNN and each net: oneDNN's own time
for each kind of primitive in a forward and backward pass (`caffe time` under
ONEDNN_VERBOSE=1, every pass it makes counted): the convolutions' passes and the reorders
between Caffe's NCHW blobs and oneDNN's layouts, each a share of the build's training step
as timed in the rounds (the pass under oneDNN's timing, which waits for each primitive and
prints a line for it, ran 1.1-2.4x slower). The weight gradient's parts run side by side on
the threads (engine/patches/fast/07): their time is summed over the threads, thread-ms.

With --shared NET, the cores shared, in the same rounds, for the fast build (its
thread count following the free cores), the fast build with HINTKD_THREADS=fixed
(as it ran before it followed them) and PyTorch: the net's step alone; two
processes of the engine stepping at once (their throughput against the same two
one after the other: 1.00 means no loss); and one busy process (a Python loop)
beside it (its step's time against alone's). Each case is timed after 2 s of steps
in it, for every engine in turn; builds given with --also share the cores too.
"""
import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hintkd import engine  # noqa: E402

BATCH = 128  # the paper's CIFAR batch (sec. 3.1)
SHAPE = [BATCH, 3, 32, 32]
TORCH_VERSION = "2.13.0"
# PyTorch as run: its default layout, channels_last, channels_last with torch.compile.
TORCH_MODES = {"pytorch": "default", "pytorch-cl": "channels_last", "pytorch-compile": "compile"}
SOLVER = ('net: "{net}"\nbase_lr: 0.1\nmomentum: 0.9\nweight_decay: 0.0001\nlr_policy: "fixed"\n'
          'max_iter: 100000000\ndisplay: 0\nsnapshot: 0\nsolver_mode: CPU\n')


# --- the nets ----------------------------------------------------------------

def named_prefix(text):
    """--also's NAME=PREFIX: a name for the table and an installed Caffe build."""
    name, _, prefix = text.partition("=")
    if not name or not (Path(prefix) / "BUILD-INFO.json").is_file():
        raise argparse.ArgumentTypeError(f"expected NAME=PREFIX with a Caffe build in PREFIX "
                                         f"(engine/install_caffe.sh --print-prefix), got {text!r}")
    return name, str(Path(prefix).resolve())


def plan_nets(folder, depths, stage2):
    """Input-fed train nets written by the planner: {label: prototxt path}, and
    each ResNet's description for PyTorch."""
    import numpy as np
    from hintkd import datasets, lmdb_data, netgen, plan

    rng = np.random.RandomState(0)
    sample = datasets.Dataset("cifar10", [str(i) for i in range(10)],
                              rng.randint(0, 256, (20, 3, 32, 32), dtype=np.uint8), rng.randint(0, 10, 20),
                              rng.randint(0, 256, (10, 3, 32, 32), dtype=np.uint8), rng.randint(0, 10, 10))
    lmdb_data.write_dataset(sample, datasets.dataset_info("cifar10"), folder / "data")
    nets, specs = {}, {}
    for depth in depths:
        opts = plan.RunOptions("cifar10", depth, depth, "student", folder / "data", folder / "runs", nets=1)
        (stage,) = plan.plan(opts)
        nets[f"ResNet-{depth}"] = stage / "train_val.prototxt"
        specs[f"ResNet-{depth}"] = {"depth": depth, "widths": list(opts.widths("student")), "classes": 10}
    teacher, student = stage2
    opts = plan.RunOptions("cifar10", teacher, student, "proposed", folder / "data", folder / "runs", nets=1)
    stage2 = next(s for s in plan.plan(opts) if s.name == "stage2-net1")
    nets[f"Stage 2 ({teacher}->{student})"] = stage2 / "train_val.prototxt"
    for label, path in nets.items():
        fed = path.with_name("benchmark.prototxt")
        fed.write_text(netgen.with_input_layer(path.read_text(), SHAPE))
        nets[label] = fed
    return nets, specs


def training_flops(prototxt):
    """FLOPs of one training step per image: forward, backward data and backward
    weights of every convolution and inner product of a learning layer, forward
    only for frozen ones (lr_mult 0: a teacher); BatchNorm and the rest are
    bandwidth, not FLOPs."""
    caffe = engine.import_caffe()
    net = caffe.Net(str(prototxt), caffe.TRAIN)
    spec = engine.caffe_pb2().NetParameter()
    from google.protobuf import text_format
    text_format.Parse(Path(prototxt).read_text(), spec)
    frozen = {layer.name for layer in spec.layer if layer.param and all(p.lr_mult == 0 for p in layer.param)}
    flops = 0
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type not in ("Convolution", "InnerProduct"):
            continue
        weights = layer.blobs[0].data.size
        top = net.top_names[name][0]
        positions = net.blobs[top].data[0].size // net.blobs[top].data.shape[1]  # output pixels
        forward = 2 * weights * positions
        first = net.bottom_names[name][0] == "data"  # no gradient for the images
        flops += forward if name in frozen else forward * (2 if first else 3)
    return flops


# --- workers -----------------------------------------------------------------

def caffe_worker(nets):
    """Serves timing requests for Caffe nets: one solver per net."""
    import numpy as np
    caffe = engine.import_caffe()
    caffe.set_mode_cpu()
    rng = np.random.RandomState(0)
    solvers, spans = {}, {}
    for label, path in nets.items():
        solver_path = Path(path).with_name("benchmark_solver.prototxt")
        solver_path.write_text(SOLVER.format(net=path))
        solver = caffe.get_solver(str(solver_path))
        solver.net.blobs["data"].data[...] = rng.normal(0, 50, SHAPE)
        solver.net.blobs["label"].data[...] = rng.randint(0, 10, BATCH)
        solvers[label] = solver
        names = [n for n in solver.net._layer_names if n.startswith("teacher/")]
        spans[label] = (names[0], names[-1]) if names else None
    serve({"step": lambda label, steps: timed(lambda: solvers[label].step(1), steps),
           "layers": lambda label, steps: layer_seconds(solvers[label].net, steps),
           "teacher": lambda label, steps: timed(
               lambda: solvers[label].net.forward(start=spans[label][0], end=spans[label][1]), steps)})


def torch_worker(specs):
    """The same ResNets in PyTorch (conv-BN-ReLU, 1x1 projection + BN shortcuts)."""
    import torch
    from torch import nn
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    torch.manual_seed(0)

    def conv_bn(cin, cout, kernel, stride):
        return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *conv_bn(cout, cout, 3, 1))
            self.shortcut = (nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout
                             else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    def resnet(depth, widths, classes):
        n = (depth - 2) // 6
        layers, cin = [*conv_bn(3, widths[0], 3, 1), nn.ReLU(inplace=True)], widths[0]
        for stage, width in enumerate(widths):
            for b in range(n):
                layers.append(Block(cin, width, 2 if stage and not b else 1))
                cin = width
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    mode = os.environ.get("HINTKD_TORCH_MODE", "default")  # TORCH_MODES
    models = {}
    for label, spec in specs.items():
        model = resnet(spec["depth"], spec["widths"], spec["classes"]).train()
        data, label_t = torch.randn(SHAPE) * 50, torch.randint(0, 10, (BATCH,))
        if mode != "default":
            model, data = model.to(memory_format=torch.channels_last), data.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        models[label] = (torch.compile(model) if mode == "compile" else model, optimizer, data, label_t)

    def step(label):
        model, optimizer, data, target = models[label]
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(data), target).backward()
        optimizer.step()

    if mode == "compile":  # compiled before the timings start, or the worker says why it cannot run
        try:
            for label in models:
                step(label)
        except Exception as e:  # torch.compile's failures have no common type (a compiler, headers, ...)
            print(json.dumps({"ready": False, "why": " ".join(str(e).split())[:300]}), flush=True)
            return 0
    serve({"step": lambda label, steps: timed(lambda: step(label), steps)})


def timed(fn, steps):
    """Seconds per call of fn, after one call untimed (the first call after another
    engine or net ran is the slowest)."""
    fn()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - started) / steps


def timed_for(fn, seconds):
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
    return time.perf_counter() - started


def serve(handlers):
    # "settle": steps for a while untimed, so that a timing starts where the fast
    # build has chosen its thread count for what else runs (twice a second).
    handlers["settle"] = lambda label, seconds: timed_for(lambda: handlers["step"](label, 1), seconds)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps({"seconds": handlers[request["what"]](request["label"], request["steps"])}), flush=True)


class Worker:
    def __init__(self, name, argv, env):
        self.name = name
        self.env = env
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=dict(os.environ, **env))
        started = self.read_line()
        self.ready, self.why = started["ready"], started.get("why")

    def read_line(self):
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"benchmark_engines.py: the {self.name} worker stopped (exit {self.process.wait()})")
        return json.loads(line)

    def send(self, what, label, steps):
        """Asks for a timing; received() reads it (two workers can time at once)."""
        self.process.stdin.write(json.dumps({"what": what, "label": label, "steps": steps}) + "\n")
        self.process.stdin.flush()

    def received(self):
        return self.read_line()["seconds"]

    def time(self, what, label, steps):
        self.send(what, label, steps)
        return self.received()

    def close(self):
        self.process.stdin.close()
        self.process.wait()


SETTLE_SECONDS = 2.0


def shared_cores(sharers, twins, label, steps):
    """{engine: [alone, two at once, beside a busy process]} seconds per step on one net,
    each case for every engine in turn (side by side), each timed after SETTLE_SECONDS of
    steps in the same situation."""
    def settled(*workers):
        for each in workers:
            each.send("settle", label, SETTLE_SECONDS)
        for each in workers:
            each.received()

    cases = {name: [] for name in sharers}
    for name, worker in sharers.items():
        settled(worker)
        cases[name].append(worker.time("step", label, steps))
    for name, worker in sharers.items():
        settled(worker, twins[name])
        worker.send("step", label, steps)
        twins[name].send("step", label, steps)
        cases[name].append(max(worker.received(), twins[name].received()))
    busy = subprocess.Popen([engine.SYSTEM_PYTHON, "-c", "while True: pass"])
    try:
        for name, worker in sharers.items():
            settled(worker)
            cases[name].append(worker.time("step", label, steps))
    finally:
        busy.kill()
        busy.wait()
    settled(*sharers.values())  # the next timings find them as a run alone would be
    return cases


# --- per layer type ----------------------------------------------------------------

def layer_seconds(net, steps):
    """{layer: (type, forward, backward seconds per step)}, one layer at a time as `caffe
    time` does, but through the net's own passes, so that a layer the net does not
    back-propagate (the frozen teacher) has no backward pass, as in training."""
    names = list(net._layer_names)
    forward, backward = [0.0] * len(names), [0.0] * len(names)
    for step in range(steps + 1):  # the first untimed, as in timed()
        for i in range(len(names)):
            started = time.perf_counter()
            net._forward(i, i)
            forward[i] += (time.perf_counter() - started) * (step > 0)
        for i in reversed(range(len(names))):
            started = time.perf_counter()
            net._backward(i, i)
            backward[i] += (time.perf_counter() - started) * (step > 0)
    return {name: (layer.type, f / steps, b / steps)
            for name, layer, f, b in zip(names, net.layers, forward, backward)}


def print_layer_table(label, rounds, steps):
    """Forward and backward ms per step of each layer type in each build: each layer's median
    over the rounds, summed by type; the rest of a step (the solver's update) is the build's
    median step time ({build: seconds}) less its layers."""
    builds = list(rounds)
    types = {layer: kind for layer, (kind, _, _) in rounds[builds[0]][0].items()}
    ms = {}  # (type, build) -> [forward, backward]
    for build, measured in rounds.items():
        for layer, kind in types.items():
            total = ms.setdefault((kind, build), [0.0, 0.0])
            for d in (0, 1):
                total[d] += 1000 * statistics.median(times[layer][1 + d] for times in measured)
    for build in builds:
        rest = 1000 * steps[build] - sum(sum(v) for (_, b), v in ms.items() if b == build)
        ms["(rest of the step)", build] = [max(rest, 0.0), 0.0]
    kinds = sorted({t for t, _ in ms}, key=lambda t: -sum(ms[t, builds[0]]))
    counts = {kind: list(types.values()).count(kind) for kind in kinds}
    print(f"\n{label}: ms per step by layer type (forward, backward, share of the step)")
    print(f"{'type':<20} {'layers':>6} " + " ".join(f"{b + ' fwd':>10} {b + ' bwd':>10} {b + ' %':>7}" for b in builds)
          + "".join(f" {b + '/' + builds[0]:>12}" for b in builds[1:]))
    for kind in kinds:
        line = f"{kind:<20} {counts[kind] or '':>6} " + " ".join(
            f"{ms[kind, b][0]:>10.2f} {ms[kind, b][1]:>10.2f} {sum(ms[kind, b]) / (1000 * steps[b]):>7.0%}"
            for b in builds)
        line += "".join(f" {sum(ms[kind, b]) / sum(ms[kind, builds[0]]):>11.2f}x" if sum(ms[kind, b]) and
                        sum(ms[kind, builds[0]]) else f" {'-':>12}" for b in builds[1:])
        print(line)


# --- oneDNN's primitives ------------------------------------------------------------

# oneDNN's verbose line for a primitive run (2.6 and 3.x alike): its kind, implementation,
# pass, descriptors ..., and last its time in ms.
PRIMITIVE_RUN = re.compile(r"^onednn_verbose,exec,cpu,(\w+),[^,]*,(\w+),.*,([\d.]+)$", re.M)


def primitive_ms(net, env, iterations=3):
    """{primitive kind (convolutions by pass): (ms, runs) per forward and backward pass of NET},
    from oneDNN's own timing in `caffe time` (it makes iterations + 1 passes)."""
    env = dict(os.environ, **env)
    prefix = engine.prefix_for(env)
    # A Stage 2 net's KD layer is a Python layer (hintkd.caffe_layers), which imports pycaffe.
    python_path = os.pathsep.join([str(engine.REPO), str(prefix / "python")])
    result = subprocess.run([str(prefix / "bin" / "caffe"), "time", "-model", str(net),
                             "-iterations", str(iterations)], capture_output=True, text=True, check=True,
                            env=dict(env, ONEDNN_VERBOSE="1", PYTHONPATH=python_path))
    totals = {}
    for kind, pass_, ms in PRIMITIVE_RUN.findall(result.stdout):
        key = f"{kind} {pass_}" if kind == "convolution" else kind
        total_ms, runs = totals.get(key, (0.0, 0))
        totals[key] = (total_ms + float(ms), runs + 1)
    return {key: (total_ms / (iterations + 1), runs / (iterations + 1)) for key, (total_ms, runs) in totals.items()}


def print_primitive_table(label, measured, steps):
    """measured: {build: {primitive kind: (ms, runs) per pass}} for one net; steps: {build:
    seconds per training step in the rounds}."""
    kinds = sorted({k for totals in measured.values() for k in totals},
                   key=lambda k: -max(totals.get(k, (0.0,))[0] for totals in measured.values()))
    print(f"\n{label}: oneDNN's primitives in a forward and backward pass (ONEDNN_VERBOSE=1 caffe time), "
          f"ms per pass (share of a training step in the rounds)")
    print(f"{'build':<12} {'step ms':>8} " + " ".join(f"{k:>30}" for k in kinds))
    for build, totals in measured.items():
        step = 1000 * steps[build]
        print(f"{build:<12} {step:>8.1f} " + " ".join(
            f"{totals[k][0]:>22.1f} ({totals[k][0] / step:>4.0%})" if k in totals else f"{'-':>30}" for k in kinds))


# --- the machine's limit -------------------------------------------------------

def sgemm_gflops(size=2048, repeats=3):
    """oneDNN's sgemm on size^3 (all threads): the machine's practical FLOP peak."""
    import numpy as np
    dnnl = ctypes.CDLL("libdnnl.so.2")
    dnnl.dnnl_sgemm.argtypes = [ctypes.c_char, ctypes.c_char] + [ctypes.c_int64] * 3 + [
        ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_float, ctypes.c_void_p, ctypes.c_int64]
    a, b = (np.random.RandomState(i).rand(size, size).astype(np.float32) for i in (1, 2))
    c = np.zeros((size, size), np.float32)
    best = float("inf")
    for _ in range(repeats + 1):
        started = time.perf_counter()
        dnnl.dnnl_sgemm(b"N", b"N", size, size, size, 1.0, a.ctypes.data, size, b.ctypes.data, size,
                        0.0, c.ctypes.data, size)
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


def torch_python():
    """The benchmark's own venv with PyTorch CPU, made on first use."""
    venv = Path(os.environ.get("HINTKD_CACHE", Path.home() / ".cache" / "hintkd")) / "bench-venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import torch; assert torch.__version__.startswith('{TORCH_VERSION}')"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"installing PyTorch {TORCH_VERSION} (CPU) into {venv} for the comparison ...", file=sys.stderr)
    subprocess.run([engine.SYSTEM_PYTHON, "-m", "venv", "--clear", str(venv)], check=True)
    # --no-deps: the CPU wheel itself, then only its pure-Python dependencies
    # (a plain install would pull a CUDA build of several GB).
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", f"torch=={TORCH_VERSION}"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy", "setuptools>=77.0.3", "filelock",
                    "typing-extensions", "sympy", "networkx", "jinja2", "fsspec"], check=True)
    subprocess.run(check, check=True)
    return python


# --- the run -------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="8,20,32", help="ResNet depths (6n+2), comma-separated")
    parser.add_argument("--stage2", default="26,14", help="teacher,student depths of the Stage 2 net")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=2, help="training steps timed per net per round")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--portable", action="store_true",
                        help="also the portable fast build (HINTKD_PORTABLE=1, as in the images), built if missing")
    parser.add_argument("--unfused", action="store_true",
                        help="also the fast build with HINTKD_FUSE=off (BatchNorm, Scale and ReLU apart)")
    parser.add_argument("--layers", action="store_true",
                        help="also each Caffe build's time per layer type on every net, forward and backward")
    parser.add_argument("--primitives", action="store_true",
                        help="also oneDNN's time per kind of primitive (reorders too) in each build on oneDNN")
    parser.add_argument("--shared", metavar="NET", help="also the shared-core cases on this net (e.g. ResNet-20)")
    parser.add_argument("--also", metavar="NAME=PREFIX", action="append", default=[], type=named_prefix,
                        help="also the Caffe build installed in PREFIX, named NAME (repeatable)")
    parser.add_argument("--worker", choices=("caffe", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--nets", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "caffe":
        return caffe_worker(json.loads(args.nets))
    if args.worker == "torch":
        return torch_worker(json.loads(args.nets))
    engine.use_system_python()

    depths = [int(d) for d in args.depths.split(",")]
    stage2 = [int(d) for d in args.stage2.split(",")]
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    env = {"OMP_NUM_THREADS": threads, "GLOG_minloglevel": "2"}
    with tempfile.TemporaryDirectory() as tmp:
        nets, specs = plan_nets(Path(tmp), depths, stage2)
        flops = {label: training_flops(path) for label, path in nets.items()}
        me = [engine.SYSTEM_PYTHON, str(Path(__file__).resolve()), "--nets"]
        workers = {}
        builds = {"fast": ("cpu", {}), "stock": ("stock", {})}
        if args.portable:
            builds["portable"] = ("cpu", {"HINTKD_PORTABLE": "1"})
        if args.unfused:
            builds["unfused"] = ("cpu", {"HINTKD_FUSE": "off"})
        builds.update({name: ("cpu", {"HINTKD_CAFFE_PREFIX": prefix}) for name, prefix in args.also})
        for build, (variant, build_vars) in builds.items():
            build_env = dict(env, HINTKD_CAFFE_VARIANT=variant, HINTKD_CAFFE_PREFIX="", HINTKD_PORTABLE="0")
            build_env.update(build_vars)
            if not build_env["HINTKD_CAFFE_PREFIX"]:
                subprocess.run(["bash", str(engine.INSTALL_SCRIPT), f"--{variant}"], check=True,
                               stdout=subprocess.DEVNULL, env=dict(os.environ, **build_env))
            workers[build] = Worker(build, me + [json.dumps({k: str(v) for k, v in nets.items()}), "--worker", "caffe"],
                                    build_env)
        if not args.no_torch:
            argv = [str(torch_python())] + me[1:] + [json.dumps(specs), "--worker", "torch"]
            for name, mode in TORCH_MODES.items():
                worker = Worker(name, argv, dict(env, HINTKD_TORCH_MODE=mode))
                if worker.ready:
                    workers[name] = worker
                else:
                    print(f"benchmark_engines.py: {name} left out: {worker.why}", file=sys.stderr)
                    worker.close()
        if args.shared and args.shared not in nets:
            raise SystemExit(f"benchmark_engines.py: --shared {args.shared}: not one of {', '.join(nets)}")
        # The shared cases: each engine and a second process of it; the fast build also
        # with HINTKD_THREADS=fixed (its thread count kept whatever else runs).
        sharers = {}
        if args.shared:
            fast = workers["fast"]
            sharers = {"fast": fast,
                       "fast fixed": Worker("fast fixed", fast.process.args, dict(fast.env, HINTKD_THREADS="fixed"))}
            sharers.update({name: workers[name] for name, _ in args.also})
            sharers.update({"pytorch": workers["pytorch"]} if "pytorch" in workers else {})
        twins = {name: Worker(f"second {name}", sharer.process.args, sharer.env) for name, sharer in sharers.items()}
        shared = {name: [] for name in twins}
        resnets = [f"ResNet-{d}" for d in depths]
        stage2_label = next(label for label in nets if label.startswith("Stage 2"))
        times = {(w, label): [] for w in workers for label in nets}
        teacher = {w: [] for w in builds}
        layer_rounds = {(build, label): [] for build in builds for label in nets}
        peaks = []
        for round_ in range(args.rounds + 1):  # round 0 warms up
            record = round_ > 0
            peak = sgemm_gflops()
            peaks.append(peak) if record else None
            # Each round starts with another engine: whichever came first in a round, right
            # after the sgemm, ran up to 1.5x slower than in other places (measured by
            # swapping two engines).
            order = list(workers.items())
            order = order[round_ % len(order):] + order[:round_ % len(order)]
            for label in nets:
                for name, worker in order:
                    if name in TORCH_MODES and label not in resnets:
                        continue
                    seconds = worker.time("step", label, args.steps)
                    if record:
                        times[name, label].append(seconds)
                    if label == stage2_label and record:
                        teacher[name].append(worker.time("teacher", label, args.steps))
            if sharers:
                cases = shared_cores(sharers, twins, args.shared, args.steps)
                for name in shared:
                    shared[name].append(cases[name]) if record else None
            for label in nets if args.layers and record else ():
                for build in (name for name, _ in order if name in builds):
                    layer_rounds[build, label].append(workers[build].time("layers", label, args.steps))
            print(f"round {round_}/{args.rounds} done{'' if record else ' (warm-up)'}", file=sys.stderr, flush=True)
        for worker in [*workers.values(), *twins.values(), *(w for n, w in sharers.items() if n not in workers)]:
            worker.close()
        # The builds on oneDNN (not the stock one), one at a time with nothing else running.
        primitives = {(build, label): primitive_ms(path, workers[build].env)
                      for label, path in nets.items() for build, (variant, _) in builds.items()
                      if args.primitives and variant == "cpu"}

    peak = statistics.median(peaks)
    median = {key: statistics.median(v) for key, v in times.items() if v}
    print(f"Training step (forward, backward, SGD update), batch {BATCH}, 32x32x3, CPU, {threads} threads; "
          f"median of {args.rounds} interleaved rounds of {args.steps} steps")
    print(f"machine: sgemm (oneDNN, 2048^3) {peak:.0f} GFLOP/s")
    names = list(workers)
    header = f"{'net':<20} {'GFLOP/img':>9} " + " ".join(f"{n + ' img/s':>13}" for n in names)
    torches = [n for n in names if n in TORCH_MODES]
    header += f" {'fast/stock':>10}" + (f" {'fast/pytorch':>12}" if "pytorch" in names else "")
    header += f" {'fast/best pytorch':>17}" if len(torches) > 1 else ""
    header += f" {'portable/fast':>13}" if "portable" in names else ""
    header += f" {'fast/unfused':>12}" if "unfused" in names else ""
    header += "".join(f" {'fast/' + name:>13}" for name, _ in args.also)
    header += " " + " ".join(f"{n + ' %peak':>13}" for n in names)
    print(header)
    for label in nets:
        rates = {n: BATCH / median[n, label] for n in names if (n, label) in median}
        line = f"{label:<20} {flops[label] / 1e9:>9.3f} " + " ".join(
            f"{rates[n]:>13.1f}" if n in rates else f"{'-':>13}" for n in names)
        line += f" {rates['fast'] / rates['stock']:>9.2f}x"
        if "pytorch" in names:
            line += f" {rates['fast'] / rates['pytorch']:>11.2f}x" if "pytorch" in rates else f" {'-':>12}"
        if len(torches) > 1:
            best = max((rates[n] for n in torches if n in rates), default=None)
            line += f" {rates['fast'] / best:>16.2f}x" if best else f" {'-':>17}"
        if "portable" in names:
            line += f" {rates['portable'] / rates['fast']:>12.2f}x" if "portable" in rates else f" {'-':>13}"
        if "unfused" in names:
            line += f" {rates['fast'] / rates['unfused']:>11.2f}x"
        line += "".join(f" {rates['fast'] / rates[name]:>12.2f}x" for name, _ in args.also)
        line += " " + " ".join(f"{rates[n] * flops[label] / 1e9 / peak:>12.0%} " if n in rates else f"{'-':>13}"
                               for n in names)
        print(line)
    for name in ("stock", "fast"):
        share = statistics.median(teacher[name]) / median[name, stage2_label]
        print(f"teacher's share of a {stage2_label} step, {name} build: {share:.0%}")
    if shared:
        print(f"\nshared cores, {args.shared}, at most {threads} threads a process, each case timed after "
              f"{SETTLE_SECONDS:.0f} s in it (goals: alone >= 0.95x the speed with fixed threads; "
              f"two at once >= 0.90 of one after the other; beside a busy process <= 2.2x alone)")
        print(f"{'engine':<10} {'alone s/step':>12} {'two at once s/step':>19} {'throughput vs in turn':>22} "
              f"{'beside busy s/step':>19} {'x alone':>8}")
        alone = {}
        for name, cases in shared.items():
            alone[name], together, beside = (statistics.median(c[i] for c in cases) for i in range(3))
            print(f"{name:<10} {alone[name]:>12.3f} {together:>19.3f} {2 * alone[name] / together:>22.2f} "
                  f"{beside:>19.3f} {beside / alone[name]:>8.2f}")
        print(f"fast (threads follow the free cores) alone: {alone['fast fixed'] / alone['fast']:.2f}x the speed "
              f"of fast fixed (HINTKD_THREADS=fixed)")
    for label in nets if args.layers else ():
        print_layer_table(label, {b: layer_rounds[b, label] for b in builds}, {b: median[b, label] for b in builds})
    for label in nets if args.primitives else ():
        print_primitive_table(label, {b: primitives[b, label] for b in builds if (b, label) in primitives},
                              {b: median[b, label] for b in builds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
