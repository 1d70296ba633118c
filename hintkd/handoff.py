"""Weight hand-offs between stages: Caffe's net.copy_from, then checked.

copy_from matches layers by name and only logs a source layer it cannot place
("Ignoring source layer"); a target layer missing from the source silently keeps
its random values. So every layer that a stage expects to inherit is looked up
in the source caffemodel first, and compared value by value after loading.
"""
import numpy as np

from hintkd import engine
from hintkd.atomic import write_bytes
from hintkd.datasets import file_digest


class HandoffError(Exception):
    """A layer that should have been loaded was not; the message names it."""


def read_caffemodel(path):
    """{layer name: [numpy arrays]} of a caffemodel, read with caffe_pb2."""
    param = _read_net(path)
    layers = param.layer or param.layers
    return {layer.name: [np.asarray(b.data, dtype=np.float32) for b in layer.blobs]
            for layer in layers if layer.blobs}


def _blob_shape(blob):
    if blob.HasField("shape"):
        return tuple(blob.shape.dim)
    legacy = (blob.num, blob.channels, blob.height, blob.width)  # a caffemodel of Caffe before 2015
    return tuple(d for d in legacy if d != 1) or (1,)


def _read_net(path):
    from google.protobuf.message import DecodeError
    param = engine.caffe_pb2().NetParameter()
    try:
        with open(path, "rb") as f:
            param.ParseFromString(f.read())
    except (OSError, DecodeError) as e:
        raise HandoffError(f"cannot read weights {path}: {e}") from None
    return param


def match_layers(shapes, path, prefix):
    """{layer of a net: its layer in the caffemodel at path} for every layer of `shapes`
    ({layer: [blob shapes]}). A net's layer "teacher/conv1" is found in the file as
    "teacher/conv1", "conv1" (a user's own names) or "student/conv1" (a net trained here
    as the student); a layer not found, or found with other shapes, is an error."""
    param = _read_net(path)
    if param.layers:
        raise HandoffError(f"{path} is in Caffe's V1 format: upgrade it with Caffe's upgrade_net_proto_binary")
    stored = {layer.name: [_blob_shape(b) for b in layer.blobs] for layer in param.layer if layer.blobs}
    found = {}
    for name, wanted in shapes.items():
        rest = name[len(prefix):] if name.startswith(prefix) else name
        source = next((c for c in (name, rest, f"student/{rest}", f"teacher/{rest}") if c in stored), None)
        if source is None:
            raise HandoffError(f"layer '{rest}' is not in {path}")
        have = stored[source]
        squeeze = [tuple(d for d in shape if d != 1) or (1,) for shape in wanted]
        if len(have) != len(wanted) or any(h not in (w, s) for h, w, s in zip(have, wanted, squeeze)):
            raise HandoffError(f"layer '{rest}': {path} holds shapes {have}, the prototxt needs {wanted}")
        found[name] = source
    return found


def write_renamed(source, target, names):
    """Writes the layers of the caffemodel `source` named in `names` ({new: old}) under their new names."""
    param = _read_net(source)
    old_to_new = {old: new for new, old in names.items()}
    out = engine.caffe_pb2().NetParameter()
    out.name = param.name
    for layer in param.layer:
        if layer.name in old_to_new:
            copy = out.layer.add()
            copy.CopyFrom(layer)
            copy.name = old_to_new[layer.name]
    write_bytes(target, out.SerializeToString())


def load_initial_weights(net, inits):
    """Loads each {"weights": caffemodel, "layers": [names]} into net with
    copy_from, then checks every listed layer value by value; returns what was
    loaded, a record for each file (its path, sha256, the layers, frozen or not)."""
    loaded = []
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
        loaded.append({"weights": str(path), "sha256": file_digest(path), "layers": sorted(expected),
                       "frozen": bool(init.get("frozen"))})
    return loaded


def describe_loaded(record):
    return f"loaded and checked {len(record['layers'])} layers from {record['weights']}"


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
