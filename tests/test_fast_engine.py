"""The fast CPU build (oneDNN convolutions, threaded layers) computes what the
stock build computes.

Each build runs in a process of its own (tests/helpers/net_pass.py) on the same
weights and the same batch of 128 real CIFAR-10 images: one forward and one
backward pass of ResNet-8 and ResNet-20 (with the input's gradient), of a Stage 1
hint net and of a Stage 2 KD net (frozen teacher, student, KD layer), and of a
small net of convolutions the ResNets lack (bias, groups, dilation, odd sizes). Every
blob's data and diff, and every parameter's data (BatchNorm's running
statistics change in a forward pass) and diff must agree.

Tolerance: the fast build adds float32 numbers in another order (oneDNN's
convolution and GEMM kernels, BatchNorm's per-channel sums in double), which
changes the last bits of each sum (float32 keeps 24 bits). Forward, those
differences stay near that size (a few 1e-6 relative seen here): every top blob
and BatchNorm statistic must agree to FORWARD_RTOL (relative L2 norm). Backward,
they grow through every BatchNorm (its gradient subtracts two means from the top
gradient, and what is left is small) and ReLU, to about 1e-3 relative at the
first layers of ResNet-20: the stock build differs from itself that much when
only the order of the batch changes. So each gradient must agree to
NOISE_FACTOR times its own noise, measured in the same test (the stock build on
the same batch permuted: blob by blob, so a late layer whose noise is 1e-6 gets
no more room than that), at least FORWARD_RTOL and never more than BACKWARD_CAP.
One exception: a ReLU whose input lies within those last bits of 0 passes the
gradient in one build and not in the other (seen in the forward blobs: 0 in one,
a tiny value in the other), and that one value changes every gradient the backward
pass computes after it, by up to 1e-3 relative (two values of 524,288 in ResNet-20's
last block moved a BatchNorm's gamma gradient by 3.5e-4, where the batch's order
moved it by 2.9e-5). Reordering the batch changes only BatchNorm's sums and rarely
flips a ReLU; the fast build's convolutions round every output differently and flip
one or two in most layers: with the order noise alone, ResNet-20 failed for 3 of 5
weight seeds (measured).
So the gradients after such a ReLU in the backward pass (its layer's and the
earlier layers') get FLIP_RTOL at least.
A real mistake (a wrong pad, stride or layout, an overwritten instead of
accumulated gradient) is off by order 1; a 1% error in one late gradient fails too
(unless a ReLU flipped between it and the loss).

The SGD update (momentum, weight decay, the threaded axpby of the fast build) is
compared the same way over three solver iterations at lr 0.1, parameter by parameter,
with a floor of UPDATE_RTOL: the steps carry the first step's 1e-5-sized gradient
differences into the next steps' inputs, and the updates of ResNet-8 then differ by up
to 1.8e-4 (BatchNorm's running variances, the FC weights), while the stock build with
weight decay left out differs by 4.7e-4 at the median and is caught in 8 parameters
at this floor, and momentum 0.8 instead of 0.9 in 46 of 56 (measured here). The fast
build repeats a short training run bit for bit.
"""
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import CIFAR10_JPEG, REPO, python, run
from hintkd import datasets, lmdb_data, netgen, plan

NET_PASS = REPO / "tests" / "helpers" / "net_pass.py"
INSTALL = REPO / "engine" / "install_caffe.sh"
BATCH = 128
FORWARD_RTOL = 1e-4
NOISE_FACTOR = 10
FLIP_RTOL = 1e-2
BACKWARD_CAP = 5e-2
UPDATE_RTOL = 5e-4


def build_env(variant, onednn="2.6"):
    return {"HINTKD_CAFFE_VARIANT": variant, "HINTKD_CAFFE_PREFIX": "", "HINTKD_ONEDNN": onednn}


@pytest.fixture(scope="module")
def builds():
    """Both CPU builds, installed if missing (tests/run.sh installs them first)."""
    prefixes = {}
    for variant in ("cpu", "stock"):
        run(["bash", INSTALL, f"--{variant}"], env=build_env(variant))
        prefix = run(["bash", INSTALL, f"--{variant}", "--print-prefix"], env=build_env(variant)).stdout.strip()
        prefixes[variant] = json.loads((Path(prefix) / "BUILD-INFO.json").read_text())
    assert prefixes["cpu"]["fast"] and not prefixes["stock"]["fast"]
    return prefixes


@pytest.fixture(scope="module")
def onednn3_build():
    """The fast build on oneDNN 3.2 (HINTKD_ONEDNN=3.2), installed if missing."""
    env = build_env("cpu", "3.2")
    run(["bash", INSTALL], env=env)
    prefix = Path(run(["bash", INSTALL, "--print-prefix"], env=env).stdout.strip())
    assert json.loads((prefix / "BUILD-INFO.json").read_text())["onednn"] == "3.2"
    (lib,) = prefix.glob("lib/libcaffe.so.*")
    linked = run(["ldd", str(lib)]).stdout  # its own copy of oneDNN 3.2, not Debian's 2.6
    assert f"libdnnl.so.3 => {prefix}/lib/" in linked and "libdnnl.so.2" not in linked


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Each net to compare as an Input-fed prototxt, and the batch it is fed."""
    tmp = tmp_path_factory.mktemp("fast_engine")
    # 13 real images of each class: 128 of them are the batch, and the planner
    # needs a prepared dataset (its manifest's mean) to write the stage nets.
    sample = datasets.load("cifar10", CIFAR10_JPEG, per_class=13)
    lmdb_data.write_dataset(sample, datasets.dataset_info("cifar10"), tmp / "data")
    manifest = json.loads((tmp / "data" / "manifest.json").read_text())
    images = sample.train_images[:BATCH].astype(np.float32)
    images -= np.asarray(manifest["mean"], np.float32)[:, None, None]
    np.savez(tmp / "batch.npz", data=images, label=sample.train_labels[:BATCH].astype(np.float32))

    stages = {}
    for method, teacher, student in (("student", 20, 8), ("teacher", 20, 8), ("proposed", 20, 8)):
        opts = plan.RunOptions("cifar10", teacher, student, method, tmp / "data", tmp / "runs", nets=1)
        stages.update({s.name: s for s in plan.plan(opts)})
    chosen = {"resnet8": ("student-resnet8-w16.32.64", True),
              "resnet20": ("teacher-resnet20-w16.32.64", True),
              "stage1-hint": ("stage1-step2", False),
              "stage2-kd": ("stage2-net1", False)}
    paths = {"odd-convolutions": tmp / "odd-convolutions.prototxt"}
    paths["odd-convolutions"].write_text(ODD_CONVOLUTIONS)
    for label, (stage, input_gradient) in chosen.items():
        text = netgen.with_input_layer((stages[stage] / "train_val.prototxt").read_text(),
                                       [BATCH, 3, 32, 32], force_backward=input_gradient)
        paths[label] = tmp / f"{label}.prototxt"
        paths[label].write_text(text)
    return tmp, paths


@pytest.fixture
def scratch(tmp_path):
    """pytest's folder for one test, holding its blob dumps (up to 700 MB a pass), removed
    after the test: kept, the suite's dumps filled 9 GB of every run's temporary folder."""
    yield tmp_path
    shutil.rmtree(tmp_path)


# Convolutions the ResNets do not have, through the same oneDNN path: bias, two
# groups, dilation, a non-square kernel, odd sizes with stride 2 (Caffe's output
# size rounds down, so the right/bottom padding oneDNN is given differs from the
# left/top), on the same real images. And a convolution (c4) whose bottom a later
# layer writes in place through a Reshape that shares its memory: the stock build
# takes c4's weight gradient on what is there after the forward pass, so the fast
# build must not reuse its forward pass's copy of that bottom (16 channels: the
# layout in which the fast build reuses it).
ODD_CONVOLUTIONS = """
name: "odd-convolutions"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 128 dim: 3 dim: 32 dim: 32 } shape { dim: 128 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 16 kernel_size: 3 stride: 2 pad: 0 weight_filler { type: "msra" }
                            bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "c4" type: "Convolution" bottom: "c1" top: "c4"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "v1" type: "Reshape" bottom: "c1" top: "v1" reshape_param { shape { dim: 0 dim: 0 dim: 0 dim: -1 } } }
layer { name: "r1" type: "ReLU" bottom: "v1" top: "v1" }
layer { name: "j" type: "Eltwise" bottom: "c4" bottom: "v1" top: "j" }
layer { name: "c2" type: "Convolution" bottom: "j" top: "c2"
        convolution_param { num_output: 6 kernel_h: 3 kernel_w: 1 pad_h: 2 pad_w: 0 dilation: 2 group: 2
                            weight_filler { type: "msra" } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "r2" type: "ReLU" bottom: "c2" top: "c2" }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3"
        convolution_param { num_output: 5 kernel_size: 2 stride: 2 weight_filler { type: "msra" } bias_term: false } }
layer { name: "fc" type: "InnerProduct" bottom: "c3" top: "fc" inner_product_param { num_output: 10
        weight_filler { type: "msra" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def net_pass(variant, *args, verbose=False, fuse=True, onednn="2.6"):
    # A fixed thread count (the repeat test compares bits); one case changes it itself.
    env = dict(build_env(variant, onednn), HINTKD_THREADS="fixed")
    if verbose:
        env["ONEDNN_VERBOSE"] = "2"  # each primitive made and run
    if not fuse:
        env["HINTKD_FUSE"] = "off"
    return python(NET_PASS, *args, env=env)


def input_reorders(onednn_verbose):
    """How many batch-sized tensors were reordered from Caffe's NCHW into oneDNN's layout
    (oneDNN 3 writes "abcd::f0" where 2.6 writes "abcd:f0")."""
    return len(re.findall(rf"^onednn_verbose,exec,cpu,reorder,[^,]*,[^,]*,src_f32::blocked:abcd::?f0 [^,]*,[^,]*,[^,]*,"
                          rf"{BATCH}x", onednn_verbose, re.M))


def fused_layers(caffe_log):
    """[(BatchNorm, Scale, ReLU or "")] the fast build ran as one layer, from its INFO lines."""
    return re.findall(r"net\.cpp:\d+\] (\S+) runs (\S+)(?: and (\S+))?$", caffe_log, re.M)


def differences(ours, stock, order=None):
    """Relative L2 difference of every array, {key: difference}. order: the
    permutation `ours` had its batch in (its batch-shaped blobs are put back)."""
    assert ours.files and sorted(ours.files) == sorted(stock.files)
    inverse = np.argsort(order) if order is not None else None
    result = {}
    for key in stock.files:
        a, b = ours[key].astype(np.float64), stock[key].astype(np.float64)
        if inverse is not None and key.startswith(("data:", "diff:")) and a.ndim and a.shape[0] == BATCH:
            a = a[inverse]
        assert a.shape == b.shape, key
        assert np.isfinite(a).all() and np.isfinite(b).all(), key
        scale, diff = np.linalg.norm(b), np.linalg.norm(a - b)
        result[key] = diff / scale if scale > 0 else (0.0 if diff == 0 else np.inf)
    return result


def worst(diffs, kinds):
    return max((value, key) for key, value in diffs.items() if key.startswith(kinds))


def beyond_own_noise(ours, noise, kinds, floor=FORWARD_RTOL, flipped=()):
    """{key: (difference, limit)} of every array of those kinds that differs from the stock
    build by more than NOISE_FACTOR times its own order noise (floor at least, FLIP_RTOL
    for the keys in flipped, BACKWARD_CAP at most)."""
    limits = {key: min(BACKWARD_CAP, max(NOISE_FACTOR * noise[key], floor, FLIP_RTOL if key in flipped else 0))
              for key in ours if key.startswith(kinds)}
    return {key: (ours[key], limit) for key, limit in limits.items() if ours[key] > limit}


def after_flipped_relus(ours, stock, layers):
    """The gradient keys that the backward pass computes after a ReLU that decided
    differently in the two builds: a value 0 in one and, in the other, within
    FORWARD_RTOL of the blob's size, in a blob the backward pass goes through (a frozen
    teacher's do not count). layers: [(layer, tops)] in the net's order."""
    first, last = {}, {}  # the layers that write each blob: the first and the last
    for i, (_, tops) in enumerate(layers):
        for top in tops:
            first.setdefault(top, i)
            last[top] = i
    flips = []
    for key in stock.files:
        if key.startswith("data:") and np.any(stock["diff:" + key[len("data:"):]]):
            a, b = ours[key], stock[key]
            tiny = FORWARD_RTOL * np.sqrt(np.mean(np.square(b, dtype=np.float64)))
            apart = ((a == 0) & (b > 0)) | ((a > 0) & (b == 0))
            if np.any(apart & (np.maximum(a, b) <= tiny)):
                flips.append(last[key[len("data:"):]])
    if not flips:
        return set()
    index = {name: i for i, (name, _) in enumerate(layers)}
    position = {key: first[key[len("diff:"):]] if key.startswith("diff:") else index[key.split(":")[1]]
                for key in stock.files if key.startswith(("diff:", "param_diff:"))}
    return {key for key, i in position.items() if i <= max(flips)}


def permuted_batch(tmp):
    """The batch in another order, and that order."""
    batch = np.load(tmp / "batch.npz")
    order = np.random.RandomState(0).permutation(BATCH)
    np.savez(tmp / "permuted.npz", **{name: array[order] for name, array in batch.items()})
    return tmp / "permuted.npz", order


# {case: (net, OpenMP threads of the fast build's second pass, whether it fuses layers)}.
# The fast build's thread count follows the free cores, so a run may change it between
# passes: then its convolutions are made anew for the new count and must compute the
# same. It runs each BatchNorm's Scale and ReLU in the BatchNorm's passes unless
# HINTKD_FUSE=off: both ways must compute what the stock build's separate layers do.
# label: (net, a second pass's thread count, fused, the fast build's oneDNN). The oneDNN 3.2
# build (patches/onednn3: every primitive made through oneDNN 3's API, a weight gradient's
# parts found by layout tag) on the nets that make the most kinds of primitive.
PASSES = {"resnet8": ("resnet8", None, True, "2.6"), "resnet20": ("resnet20", None, True, "2.6"),
          "stage1-hint": ("stage1-hint", None, True, "2.6"), "stage2-kd": ("stage2-kd", None, True, "2.6"),
          "odd-convolutions": ("odd-convolutions", None, True, "2.6"),
          "resnet20-then-1-thread": ("resnet20", 1, True, "2.6"), "resnet20-unfused": ("resnet20", None, False, "2.6"),
          "resnet20-onednn3": ("resnet20", None, True, "3.2"), "stage2-kd-onednn3": ("stage2-kd", None, True, "3.2"),
          "odd-convolutions-onednn3": ("odd-convolutions", None, True, "3.2")}


def created_convolutions(onednn_verbose):
    return sum(line.startswith("onednn_verbose,create") and ",convolution," in line
               for line in onednn_verbose.splitlines())


@pytest.mark.parametrize("label", PASSES)
def test_fast_build_matches_stock(builds, nets, scratch, label, request):
    tmp, paths = nets
    net_label, second_threads, fuse, onednn = PASSES[label]
    if onednn != "2.6":
        request.getfixturevalue("onednn3_build")
    net = paths[net_label]
    weights = tmp / f"{label}.caffemodel"
    net_pass("stock", "init", net, weights, 7)
    outputs = {}
    for variant in ("cpu", "stock"):
        outputs[variant] = scratch / f"{variant}.npz"
        threads = [second_threads] if variant == "cpu" and second_threads else []
        result = net_pass(variant, "pass", net, weights, tmp / "batch.npz", outputs[variant], *threads,
                          verbose=variant == "cpu", fuse=fuse, onednn=onednn)
        if variant == "cpu":  # the fast build really took oneDNN's convolutions
            assert "convolution" in result.stdout and "backward_weights" in result.stdout
            created = created_convolutions(result.stdout)
            fused = fused_layers(result.stderr)
            reorders = input_reorders(result.stdout)
            if onednn == "3.2":  # no float Winograd kernels there, and its log says so
                assert all(kinds == {"direct"} for kinds in convolution_kernels(result.stdout).values())
                assert "oneDNN 3 having no float Winograd kernels (HINTKD_CONV_ALGORITHM=auto)" in result.stderr
    # Fused, every BatchNorm of these nets (X/bn) ran its Scale (X/scale) and the ReLU
    # that follows that (X/relu, where the net has one).
    text = net.read_text()
    layers = set(re.findall(r'name: "([^"]+)"', text))
    expected = [(f"{x}/bn", f"{x}/scale", f"{x}/relu" if f"{x}/relu" in layers else "")
                for x in sorted(name[:-len("/bn")] for name in layers if name.endswith("/bn"))] if fuse else []
    assert sorted(fused) == expected
    # Fused, a ResNet's convolution reorders its input and its top's gradient once a pass each
    # (the weight gradient takes the forward pass's copy, the data gradient the weight
    # gradient's), two passes here; each primitive its own copy without. (oneDNN 3.2 gives the
    # strided layers' data gradient other layouts, brgconv_strided's nhwc, so more copies.)
    if net_label.startswith("resnet") and onednn == "2.6":
        convolutions = text.count('type: "Convolution"')
        assert (0 < reorders <= 2 * 2 * convolutions) == fuse, (reorders, convolutions)
    if second_threads:  # its convolutions were made again for the second pass's thread count
        single = net_pass("cpu", "pass", net, weights, tmp / "batch.npz", scratch / "single.npz", verbose=True,
                          onednn=onednn)
        assert created == 2 * created_convolutions(single.stdout) > 0
    # The stock build's own float32 noise: the same batch in another order.
    permuted, order = permuted_batch(tmp)
    net_pass("stock", "pass", net, weights, permuted, scratch / "permuted.npz")
    fast, stock = np.load(outputs["cpu"]), np.load(outputs["stock"])
    ours = differences(fast, stock)
    noise = differences(np.load(scratch / "permuted.npz"), stock, order)
    flipped = after_flipped_relus(fast, stock, json.loads(outputs["stock"].with_suffix(".json").read_text()))
    forward, backward = worst(ours, ("data:", "param:")), worst(ours, ("diff:", "param_diff:"))
    ratio = max((ours[k] / max(noise[k], FORWARD_RTOL / NOISE_FACTOR), k) for k in ours
                if k.startswith(("diff:", "param_diff:")))
    print(f"{label}: forward {forward[0]:.1e} ({forward[1]}), backward {backward[0]:.1e} ({backward[1]}), "
          f"largest difference / own noise {ratio[0]:.2f} ({ratio[1]}); {len(flipped)} gradients after a flipped ReLU")
    assert forward[0] <= FORWARD_RTOL, f"{label}: {forward[1]} differs by {forward[0]:.2e}"
    over = beyond_own_noise(ours, noise, ("diff:", "param_diff:"), flipped=flipped)
    assert not over, f"{label}: gradients beyond their own noise (difference, limit): {over}"
    # Something was computed: losses, gradients of the learned parameters, and
    # (where asked for) the input's gradient are not zero.
    diffs = [k for k in stock.files if k.startswith("param_diff:") and np.abs(stock[k]).sum() > 0]
    assert len(diffs) >= (7 if net_label == "odd-convolutions" else 10)
    if net_label in ("resnet8", "resnet20", "odd-convolutions"):
        assert np.abs(stock["diff:data"]).sum() > 0


def solver_updates(variant, net, weights, inputs, out, steps):
    """{parameter: what `steps` SGD iterations added to it} for one build."""
    start = out.with_name(out.stem + "-start.npz")
    net_pass(variant, "train", net, weights, inputs, start, 0)
    net_pass(variant, "train", net, weights, inputs, out, steps)
    after, before = np.load(out), np.load(start)
    return {key: after[key] - before[key] for key in after.files if key.startswith("param:")}


@pytest.mark.parametrize("label", ["resnet8", "stage2-kd"])
def test_sgd_updates_match_stock_over_several_iterations(builds, nets, scratch, label):
    """Three solver iterations (momentum, weight decay, the update itself): each parameter's
    total update agrees with the stock build's to within 10x its own order noise, and
    UPDATE_RTOL at least."""
    tmp, paths = nets
    net, weights = paths[label], tmp / f"{label}-sgd.caffemodel"
    net_pass("stock", "init", net, weights, 11)
    permuted, _ = permuted_batch(tmp)
    updates = {}
    for name, variant, inputs in (("fast", "cpu", tmp / "batch.npz"), ("stock", "stock", tmp / "batch.npz"),
                                  ("noise", "stock", permuted)):
        updates[name] = solver_updates(variant, net, weights, inputs, scratch / f"{name}.npz", 3)

    def relative(a, b):
        return {k: np.linalg.norm(a[k] - b[k]) / np.linalg.norm(b[k]) if np.linalg.norm(b[k]) else
                float(np.linalg.norm(a[k]) > 0) for k in b}
    ours, noise = relative(updates["fast"], updates["stock"]), relative(updates["noise"], updates["stock"])
    moved = [k for k, u in updates["stock"].items() if np.abs(u).sum() > 0]
    assert len(moved) >= 10  # the student's parameters were updated
    assert not any(np.abs(updates["stock"][k]).sum() for k in updates["stock"] if k.startswith("param:teacher/"))
    over = beyond_own_noise(ours, noise, ("param:",), UPDATE_RTOL)
    assert not over, f"{label}: updates beyond their own noise (difference, limit): {over}"


def test_fast_build_repeats_a_short_training_run(builds, nets, scratch):
    """The same weights, batches and thread count: three SGD iterations give bit-identical
    parameters (no race in the threaded layers, no unseeded order)."""
    tmp, paths = nets
    net, weights = paths["resnet8"], tmp / "repeat.caffemodel"
    net_pass("stock", "init", net, weights, 3)
    first, second = scratch / "repeat-1.npz", scratch / "repeat-2.npz"
    for out in (first, second):
        net_pass("cpu", "train", net, weights, tmp / "batch.npz", out, 3)
    a, b = np.load(first), np.load(second)
    assert len(a.files) >= 20
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to compare 1 thread with 2")
@pytest.mark.parametrize("label", ["resnet20", "stage2-kd"])
def test_the_thread_count_enters_no_number(builds, nets, scratch, label):
    """The same pass on 1 and on 2 threads (fixed): every blob, BatchNorm statistic and
    gradient comes out bit for bit the same. The threaded layers sum per thread in a fixed
    order over fixed shares, and a convolution's weight gradient, which oneDNN would split
    by thread, adds fixed parts of the batch in order (07-weight-gradient-in-fixed-parts).
    Where a thread count entered the numbers, a run beside busy processes (fewer threads)
    would train differently."""
    tmp, paths = nets
    net, weights = paths[label], tmp / f"{label}-threads.caffemodel"
    net_pass("stock", "init", net, weights, 5)
    passes = {}
    for threads in (1, 2):
        passes[threads] = scratch / f"threads-{threads}.npz"
        python(NET_PASS, "pass", net, weights, tmp / "batch.npz", passes[threads],
               env=dict(build_env("cpu"), HINTKD_THREADS="fixed", OMP_NUM_THREADS=str(threads)))
    one, two = np.load(passes[1]), np.load(passes[2])
    differ = {key for key in one.files if not np.array_equal(one[key], two[key])}
    assert len(one.files) > 100 and not differ, sorted(differ)


def conv_relu(name, bottom, outputs, stride):
    """A 3x3 convolution (pad 1) and its ReLU, in prototxt."""
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f'        convolution_param {{ num_output: {outputs} kernel_size: 3 stride: {stride} pad: 1\n'
            '                             weight_filler { type: "msra" } bias_term: false } }\n'
            f'layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" top: "{name}" }}\n')


# 3x3 convolutions on each side of the Winograd rule: 16 channels at 32x32, then 32 at
# 16x16, 64 at 8x8 and 64 at 4x4, each width after a strided convolution.
WINOGRAD_SIZES = ("""name: "winograd-sizes"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 128 dim: 3 dim: 32 dim: 32 } shape { dim: 128 } } }
""" + "".join(conv_relu(f"c{k + 1}", f"c{k}" if k else "data", outputs, stride)
              for k, (outputs, stride) in enumerate([(16, 1), (16, 1), (32, 2), (32, 1),
                                                     (64, 2), (64, 1), (64, 2), (64, 1)])) + """\
layer { name: "fc" type: "InnerProduct" bottom: "c8" top: "fc"
        inner_product_param { num_output: 10 weight_filler { type: "msra" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
""")
# oneDNN 2.6 has Winograd kernels for AVX-512 only.
WINOGRAD_CPU = "avx512f" in Path("/proc/cpuinfo").read_text() and "ONEDNN_MAX_CPU_ISA" not in os.environ


def convolution_kernels(onednn_verbose):
    """{(pass, input channels, output channels, output size, kernel, stride): {algorithms}}
    of the convolutions a pass ran, from oneDNN's verbose lines."""
    kernels = {}
    for line in onednn_verbose.splitlines():
        fields = line.split(",")
        if fields[:4] != ["onednn_verbose", "exec", "cpu", "convolution"]:
            continue
        shape = re.search(r"ic(\d+)oc(\d+)_ih\d+oh(\d+)kh(\d+)sh(\d+)", line)
        algorithm = re.search(r"alg:convolution_(\w+)", line).group(1)
        kernels.setdefault((fields[5], *map(int, shape.groups())), set()).add(algorithm)
    return kernels


@pytest.mark.skipif(not WINOGRAD_CPU, reason="oneDNN's Winograd kernels need AVX-512")
def test_winograd_takes_the_layers_where_it_pays(builds, nets, scratch):
    """By default the forward and backward-data passes of 3x3 stride-1 convolutions of 32
    channels or more with outputs of 8x8 or more take Winograd kernels
    (08-winograd-where-it-pays: faster there, slower at 16 channels and on smaller maps,
    measured in docs/measured.md), every other pass the direct ones;
    HINTKD_CONV_ALGORITHM=direct keeps the direct kernels everywhere. Both give the forward
    blobs within FORWARD_RTOL of each other, and not the same bits (else Winograd
    never ran). How close each is to the stock build: test_fast_build_matches_stock."""
    tmp, _ = nets
    net, weights = tmp / "winograd-sizes.prototxt", tmp / "winograd-sizes.caffemodel"
    net.write_text(WINOGRAD_SIZES)
    net_pass("stock", "init", net, weights, 9)
    kernels, outputs = {}, {}
    for algorithm in ("auto", "direct"):
        outputs[algorithm] = scratch / f"{algorithm}.npz"
        result = python(NET_PASS, "pass", net, weights, tmp / "batch.npz", outputs[algorithm],
                        env=dict(build_env("cpu"), HINTKD_THREADS="fixed", ONEDNN_VERBOSE="1",
                                 HINTKD_CONV_ALGORITHM=algorithm))
        kernels[algorithm] = convolution_kernels(result.stdout)
        assert f"(HINTKD_CONV_ALGORITHM={algorithm})" in result.stderr
    pays = {key for key in kernels["auto"]
            if key[0] != "backward_weights" and min(key[1:3]) >= 32 and key[3] >= 8 and key[4:] == (3, 1)}
    assert {key[1:4] for key in pays} == {(32, 32, 16), (64, 64, 8)}, sorted(kernels["auto"])
    for key, algorithms in kernels["auto"].items():
        assert algorithms == ({"winograd"} if key in pays else {"direct"}), (key, algorithms)
    assert set(kernels["direct"]) == set(kernels["auto"])
    assert all(algorithms == {"direct"} for algorithms in kernels["direct"].values()), kernels["direct"]
    auto, direct = np.load(outputs["auto"]), np.load(outputs["direct"])
    forward = {key: value for key, value in differences(auto, direct).items() if key.startswith("data:")}
    assert max(forward.values()) < FORWARD_RTOL, worst(forward, ("data:",))
    assert max(forward.values()) > 0, "the same bits with and without Winograd"


def test_the_kernel_benchmark_runs_every_shape():
    """analysis/benchmark_conv_kernels.py compiles its program against the fast build's
    oneDNN and times every shape and pass (how fast is for the benchmark to say, not a
    test): a cell for each direct kernel, Winograd only on stride-1 layers."""
    out = python(REPO / "analysis" / "benchmark_conv_kernels.py", "--no-onednn3",
                 "--rounds", "1", "--reps", "1", "--images", "16", "--parts", "2").stdout
    rows = [line for line in out.splitlines() if re.match(r"\d+->\d+ ", line)]
    assert len(rows) == 7 * 4, out
    for row in rows:  # layer, pass, then the 2.6 direct and 2.6 winograd cells
        direct, winograd = re.findall(r"\d+\.\d+ \(\s*\d+\)|(?<= )-(?= )", row)[:2]
        assert direct != "-", row
        assert (winograd == "-") == (" s2 " in row or not WINOGRAD_CPU), row


def test_the_engine_benchmark_splits_a_pass_into_onednn_primitives(builds, nets):
    """analysis/benchmark_engines.py --primitives reads oneDNN's own timing of a real pass
    (ONEDNN_VERBOSE=1 caffe time): each convolution pass, one run per layer and pass, and the
    reorders in the fast build, more reorders with HINTKD_FUSE=off (each primitive its own
    copy, as test_fast_build_matches_stock counts), nothing in the stock build, which has no
    oneDNN."""
    from analysis import benchmark_engines
    _, paths = nets
    fused = benchmark_engines.primitive_ms(paths["resnet8"], build_env("cpu"), iterations=1)
    unfused = benchmark_engines.primitive_ms(paths["resnet8"], dict(build_env("cpu"), HINTKD_FUSE="off"),
                                             iterations=1)
    passes = {"reorder", "convolution forward_training", "convolution backward_data",
              "convolution backward_weights"}
    assert passes <= set(fused) and all(ms > 0 and runs >= 1 for ms, runs in fused.values()), fused
    # Runs, not times: how many reorders a pass makes does not depend on the machine.
    assert set(unfused) == set(fused) and unfused["reorder"][1] > fused["reorder"][1], (fused, unfused)
    convolutions = paths["resnet8"].read_text().count('type: "Convolution"')
    assert fused["convolution forward_training"][1] == fused["convolution backward_data"][1] == convolutions
    assert benchmark_engines.primitive_ms(paths["resnet8"], build_env("stock"), iterations=1) == {}
