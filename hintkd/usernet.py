"""A teacher or student of the user's own: a Caffe prototxt (deploy or train_val)
read with caffe_pb2 and placed into the toolkit's stage nets.

What the toolkit replaces: the net's data layers (the dataset's own Data layers
feed it, under the blob name "data"), its losses, metrics and deploy Softmax
(the stage's heads take their place). What it keeps: every other layer, renamed
under the net's role ("teacher/conv1") so that a teacher and a student with the
same layer names can share one stage net; the exported student gets its own
names back (hintkd.export). A frozen net (the teacher) learns nothing, keeps its
BatchNorm statistics and runs without Dropout (Caffe's Dropout is the identity
at test time), as the ResNet teacher does.
"""
import copy
import functools
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from hintkd import engine, netgen

DATA_TYPES = {"Data", "ImageData", "HDF5Data", "Input", "MemoryData", "WindowData", "DummyData"}
METRIC_TYPES = {"Accuracy", "Silence"}
# Layers whose blobs hold learned or stored values (what a hand-off copies and checks).
PARAM_TYPES = {"Convolution", "Deconvolution", "InnerProduct", "BatchNorm", "Scale", "Bias", "PReLU", "Embed",
               "RNN", "LSTM"}
FILLED_TYPES = {"Convolution": "convolution_param", "Deconvolution": "convolution_param",
                "InnerProduct": "inner_product_param"}
INPUT = "data"  # the blob the dataset's Data layer fills


class UserNetError(Exception):
    """A user's prototxt the toolkit cannot place; the message names the file and the layer."""


def file_digest(path, length=8):
    """The start of a file's sha256; a file is read once while its size and time stay the same
    (run folders are named by it, and a teacher's caffemodel can be large)."""
    stat = Path(path).stat()
    return _digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)[:length]


@functools.lru_cache(maxsize=None)
def _digest(path, size, mtime_ns):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _dropped(layer, logits):
    return (layer.type in DATA_TYPES or layer.type in METRIC_TYPES or layer.type.endswith("Loss")
            or (layer.type == "Softmax" and list(layer.bottom) == [logits]))


@dataclass
class UserNet:
    """A user's net as a list of caffe_pb2 LayerParameters, placed under `role`.

    cut: blob names; when set, only the layers these blobs depend on (a teacher cut
    at its hint blobs, a student at its guided blobs). frozen: the teacher."""
    role: str
    path: Path
    layers: list
    logits_blob: str
    input_shape: tuple = None  # (C, H, W) the prototxt declares, if any
    train_batch: int = None  # the batch of its TRAIN data layer, if any
    frozen: bool = False
    cut: tuple = None
    train_only: bool = False  # left out of the test passes (netgen.render_net decides)
    shapes: dict = field(default=None, repr=False)  # blob -> shape and layer -> param shapes, set by measure()

    @classmethod
    def load(cls, path, role, logits=None):
        from google.protobuf import text_format
        path = Path(path).resolve()
        net = engine.caffe_pb2().NetParameter()
        try:
            text_format.Parse(path.read_text(), net)
        except (OSError, text_format.ParseError) as e:
            raise UserNetError(f"{path}: not a Caffe prototxt: {e}") from None
        if net.layers:
            raise UserNetError(f"{path}: V1 'layers' entries; upgrade it with Caffe's upgrade_net_proto_text first")
        where = f"{path.name}"
        inputs, extra_tops, shape, batch = list(net.input), set(), None, None
        if net.input_shape:
            shape = tuple(net.input_shape[0].dim[1:])
        elif net.input_dim:
            shape = tuple(net.input_dim[1:4])
        for layer in net.layer:
            if layer.type in DATA_TYPES:
                if not layer.top:
                    continue
                if layer.top[0] not in inputs:
                    inputs.append(layer.top[0])
                extra_tops.update(layer.top[1:])
                if layer.type == "Input" and layer.input_param.shape:
                    shape = tuple(layer.input_param.shape[0].dim[1:])
                if layer.type == "Data" and layer.transform_param.crop_size:
                    shape = (None, layer.transform_param.crop_size, layer.transform_param.crop_size)
                if layer.type == "Data" and any(r.phase == 0 for r in layer.include):  # TRAIN
                    batch = layer.data_param.batch_size or None
        if len(inputs) != 1:
            raise UserNetError(f"{where}: {len(inputs)} data inputs ({', '.join(inputs) or 'none'}); the toolkit "
                               "feeds one image input from the dataset")
        if logits is None:
            products = [layer for layer in net.layer if layer.type == "InnerProduct"]
            if not products:
                raise UserNetError(f"{where}: no InnerProduct layer whose top would be the logits; "
                                   f"name them with --{role}-logits BLOB")
            logits = products[-1].top[0]
        kept = []
        for layer in net.layer:
            if _dropped(layer, logits):
                continue
            if layer.type == "Python":
                raise UserNetError(f"{where}: layer '{layer.name}' is a Python layer; the toolkit cannot place a "
                                   "layer of the user's own code (write it as a Caffe layer, or leave it out)")
            if layer.include or layer.exclude:
                raise UserNetError(f"{where}: layer '{layer.name}' is only in some phases; the toolkit places "
                                   "layers that are in every phase")
            reads = extra_tops.intersection(layer.bottom)
            if reads:
                raise UserNetError(f"{where}: layer '{layer.name}' reads '{sorted(reads)[0]}', a second data "
                                   "input; the toolkit feeds the image input only")
            kept.append(layer)
        tops = {top for layer in kept for top in layer.top}
        if logits not in tops:
            raise UserNetError(f"{where}: no layer makes the logits blob '{logits}'")
        renamed = []
        for layer in kept:
            layer = copy.deepcopy(layer)
            layer.bottom[:] = [INPUT if b == inputs[0] else b for b in layer.bottom]
            renamed.append(layer)
        return cls(role, path, renamed, logits, shape, batch)

    # --- what the planner asks -----------------------------------------------------

    @property
    def title(self):
        return self.path.stem

    def name(self, blob):
        """The stage-net name of one of the user's blobs or layers."""
        return blob if blob == INPUT else f"{self.role}/{blob}"

    @property
    def logits(self):
        return self.name(self.logits_blob)

    @property
    def classifier(self):
        return self.cut is None

    def blobs(self):
        return {top for layer in self.layers for top in layer.top}

    def check_blob(self, blob):
        if blob not in self.blobs():
            raise UserNetError(f"{self.path.name}: no blob '{blob}' (blobs: {', '.join(sorted(self.blobs()))})")
        return blob

    def upto(self, blobs):
        """The same net cut at `blobs`: the layers those blobs depend on."""
        return replace(self, cut=tuple(self.check_blob(b) for b in blobs))

    def before_classifier(self):
        """The blob the logits layer reads: Hint-KD+'s 'last' point."""
        (maker,) = [layer for layer in self.layers if self.logits_blob in layer.top][-1:]
        return maker.bottom[0]

    def kept_layers(self):
        if self.cut is None:
            return list(self.layers)
        last = max(i for i, layer in enumerate(self.layers) if set(self.cut) & set(layer.top))
        needed, kept = set(self.cut), []
        for layer in reversed(self.layers[:last + 1]):
            if needed & set(layer.top):
                kept.append(layer)
                needed.update(layer.bottom)
        return kept[::-1]

    def param_layers(self):
        return [self.name(layer.name) for layer in self.kept_layers() if layer.type in PARAM_TYPES]

    def describe(self):
        return {"prototxt": str(self.path), "sha256": file_digest(self.path), "logits": self.logits_blob,
                "frozen": self.frozen, **({"cut": list(self.cut)} if self.cut else {})}

    def unfilled(self):
        """The first learned layer that Caffe would start at zero (a deploy prototxt has no fillers)."""
        for layer in self.layers:
            param = FILLED_TYPES.get(layer.type)
            if param and not getattr(layer, param).HasField("weight_filler"):
                return layer.name
        return None

    # --- the stage net --------------------------------------------------------------

    def layer_parameters(self):
        """The kept layers as they go into a stage net: renamed, and frozen if the net is."""
        out, alias = [], {}
        for layer in self.kept_layers():
            layer = copy.deepcopy(layer)
            bottoms = [alias.get(b, b) for b in layer.bottom]
            if self.frozen and layer.type == "Dropout":  # the identity at test time
                alias[layer.top[0]] = bottoms[0]
                continue
            layer.name = self.name(layer.name)
            layer.bottom[:] = [self.name(b) for b in bottoms]
            layer.top[:] = [self.name(t) for t in layer.top]
            if self.frozen and layer.type in PARAM_TYPES:
                if self.shapes is None:
                    raise UserNetError(f"{self.path.name}: measure() the net before freezing it")
                count = len(self.shapes["params"][layer.name])
                del layer.param[:]
                for _ in range(count):
                    layer.param.add(lr_mult=0, decay_mult=0)
                if layer.type == "BatchNorm":
                    layer.batch_norm_param.use_global_stats = True
            if self.train_only:
                layer.include.add(phase=engine.caffe_pb2().TRAIN)
            out.append(layer)
        return out

    @property
    def layers_text(self):
        from google.protobuf import text_format
        net = engine.caffe_pb2().NetParameter()
        net.layer.extend(self.layer_parameters())
        return text_format.MessageToString(net)

    def measure(self, channels, image_size):
        """Blob shapes and parameter shapes for one image of the dataset, from a
        caffe.Net of this net alone; an input the dataset cannot give is an error."""
        if self.input_shape:
            declared = tuple(self.input_shape)
            given = (channels, image_size, image_size)
            if any(d is not None and d != g for d, g in zip(declared, given)):
                raise UserNetError(f"{self.path.name}: its input is {'x'.join(str(d or '?') for d in declared)} "
                                   f"(CxHxW), the "
                                   f"dataset's images are {'x'.join(map(str, given))}; the toolkit does not resize")
        from google.protobuf import text_format
        whole = replace(self, cut=None, frozen=False)
        net = engine.caffe_pb2().NetParameter()
        data = net.layer.add(name="data", type="Input", top=[INPUT])
        data.input_param.shape.add(dim=[1, channels, image_size, image_size])
        net.layer.extend(whole.layer_parameters())
        try:
            built = netgen.built_net(text_format.MessageToString(net))
        except Exception as e:  # a check of Caffe's that raises rather than aborts
            raise UserNetError(f"{self.path.name}: Caffe cannot build it for {channels}x{image_size}x"
                               f"{image_size} images: {e}") from None
        self.shapes = {"blobs": {name: tuple(blob.data.shape) for name, blob in built.blobs.items()},
                       "params": {name: [tuple(b.data.shape) for b in blobs] for name, blobs in built.params.items()}}
        return self

    def blob_shape(self, blob):
        """(C, H, W) or (C,) of one of the user's blobs for one image."""
        return self.shapes["blobs"][self.name(blob)][1:]
