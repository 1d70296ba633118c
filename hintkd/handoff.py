"""Weight hand-offs between stages: Caffe's net.copy_from, then checked.

copy_from matches layers by name and only logs a source layer it cannot place
("Ignoring source layer"); a target layer missing from the source silently keeps
its random values. So every layer that a stage expects to inherit is looked up
in the source caffemodel first, and compared value by value after loading.
"""
import numpy as np

from hintkd import engine


class HandoffError(Exception):
    """A layer that should have been loaded was not; the message names it."""


def read_caffemodel(path):
    """{layer name: [numpy arrays]} of a caffemodel, read with caffe_pb2."""
    from google.protobuf.message import DecodeError
    param = engine.caffe_pb2().NetParameter()
    try:
        with open(path, "rb") as f:
            param.ParseFromString(f.read())
    except (OSError, DecodeError) as e:
        raise HandoffError(f"cannot read weights {path}: {e}") from None
    layers = param.layer or param.layers
    return {layer.name: [np.asarray(b.data, dtype=np.float32) for b in layer.blobs]
            for layer in layers if layer.blobs}


def load_initial_weights(net, inits):
    """Loads each {"weights": caffemodel, "layers": [names]} into net with
    copy_from, then checks every listed layer value by value; returns report lines."""
    report = []
    for init in inits:
        path, expected = init["weights"], init["layers"]
        absent = [name for name in expected if name not in net.params]
        if absent:
            raise HandoffError(f"layer '{absent[0]}' is to be loaded from {path} but the net has no such layer")
        source = read_caffemodel(path)
        missing = [name for name in expected if name not in source]
        if missing:
            raise HandoffError(f"layer '{missing[0]}' ({len(missing)} in all) is not in {path}; "
                               "it would keep random weights")
        net.copy_from(path)
        _compare(net, expected, source, path, "differs from {path} after loading")
        report.append(f"loaded and checked {len(expected)} layers from {path}")
    return report


def verify_frozen(net, inits):
    """Raises if a layer loaded as frozen (the teacher) changed while training."""
    for init in inits:
        if init.get("frozen"):
            _compare(net, init["layers"], read_caffemodel(init["weights"]), init["weights"],
                     "changed during training although it is frozen (source {path})")


def _compare(net, names, source, path, problem):
    for name in names:
        target = net.params[name]
        if len(target) != len(source[name]):
            raise HandoffError(f"layer '{name}' has {len(target)} blobs, {path} has {len(source[name])}")
        for i, blob in enumerate(target):
            if not np.array_equal(blob.data.ravel(), source[name][i]):
                raise HandoffError(f"layer '{name}' blob {i} " + problem.format(path=path))
