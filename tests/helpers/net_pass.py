"""One forward and one backward pass of a net through one Caffe build, saved so
that two builds can be compared (tests/test_fast_engine.py). Run in a process
of its own per build: the build is the one hintkd.engine finds
(HINTKD_CAFFE_VARIANT or HINTKD_CAFFE_PREFIX).

    net_pass.py init NET WEIGHTS SEED      weights from the net's fillers (seeded), with
                                           BatchNorm statistics and Scale parameters
                                           drawn at random, as a trained net has them
    net_pass.py pass NET WEIGHTS INPUTS OUT [THREADS]
                                           load WEIGHTS, set the Input blobs from INPUTS
                                           (.npz), forward and backward twice without
                                           clearing the gradients (as a solver with
                                           iter_size 2: parameter gradients must add
                                           up), the second time on THREADS OpenMP threads
                                           if given (as when the fast build's thread
                                           count follows the free cores); OUT (.npz) holds
                                           every blob's data and diff and every
                                           parameter's data and diff, OUT with the suffix
                                           .json the layers in order with their tops
    net_pass.py train NET WEIGHTS INPUTS OUT STEPS
                                           load WEIGHTS, then STEPS iterations of Caffe's SGD
                                           solver (momentum 0.9, weight decay 1e-4, lr 0.1) on
                                           the batch of INPUTS; OUT holds every parameter
                                           after them
"""
import ctypes
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # hintkd.caffe_layers (KD)
from hintkd import engine  # noqa: E402


def init(caffe, net_path, weights, seed):
    caffe.set_random_seed(int(seed))
    net = caffe.Net(net_path, caffe.TRAIN)
    rng = np.random.RandomState(int(seed))
    for layer in net.layers:
        blobs = layer.blobs
        if layer.type == "BatchNorm":
            channels = blobs[0].data.shape
            blobs[0].data[...] = rng.normal(0, 0.2, channels)
            blobs[1].data[...] = rng.uniform(0.5, 2.0, channels)
            blobs[2].data[...] = 1
        elif layer.type == "Scale":
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.normal(0, 0.2, blobs[1].data.shape)
    net.save(weights)


def one_pass(caffe, net_path, weights, inputs, out, second_threads=None):
    net = caffe.Net(net_path, caffe.TRAIN, weights=weights)
    for name, array in np.load(inputs).items():
        net.blobs[name].data[...] = array
    for index in range(2):
        if index == 1 and second_threads:
            # The calling thread's OpenMP setting, as the fast build changes it.
            ctypes.CDLL("libgomp.so.1").omp_set_num_threads(int(second_threads))
        net.forward()
        net.backward()
    arrays = {}
    for name, blob in net.blobs.items():
        arrays[f"data:{name}"] = blob.data
        arrays[f"diff:{name}"] = blob.diff
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            arrays[f"param:{name}:{i}"] = blob.data
            arrays[f"param_diff:{name}:{i}"] = blob.diff
    np.savez(out, **arrays)
    Path(out).with_suffix(".json").write_text(json.dumps([[name, list(tops)] for name, tops in net.top_names.items()]))


SOLVER = """net: "{net}"
base_lr: 0.1  lr_policy: "fixed"  momentum: 0.9  weight_decay: 0.0001
max_iter: 1000  display: 0  snapshot: 0  snapshot_after_train: false  random_seed: 1
"""


def train(caffe, net_path, weights, inputs, out, steps):
    """SGD steps as a solver takes them: diffs cleared, forward/backward, weight decay and
    momentum folded into the update (Caffe's threaded axpby in the fast build)."""
    solver_path = Path(out).with_suffix(".solver.prototxt")
    solver_path.write_text(SOLVER.format(net=Path(net_path).resolve()))
    solver = caffe.SGDSolver(str(solver_path))
    solver.net.copy_from(str(weights))
    batch = np.load(inputs)
    for _ in range(int(steps)):
        for name, array in batch.items():
            solver.net.blobs[name].data[...] = array
        solver.step(1)
    np.savez(out, **{f"param:{name}:{i}": blob.data for name, blobs in solver.net.params.items()
                     for i, blob in enumerate(blobs)})


def main(argv):
    caffe = engine.import_caffe(quiet=False)  # the tests read its INFO lines (which layers ran fused)
    caffe.set_mode_cpu()
    command, *args = argv
    {"init": init, "pass": one_pass, "train": train}[command](caffe, *args)


if __name__ == "__main__":
    main(sys.argv[1:])
