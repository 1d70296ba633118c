"""Renders train_val and solver prototxts from prototxt_templates/ and checks
them with Caffe's own caffe_pb2 (the single source of truth for field names)."""
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import jinja2

from hintkd import engine, iterations

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "prototxt_templates"
SCHEDULES = REPO / "solvers" / "schedules.json"
SHORTCUTS = ("projection", "zero_pad")
# Caffe's default BatchNorm moving_average_fraction, for the paper's full schedules.
BN_MOVING_AVERAGE_FRACTION = 0.999
# Heads of prototxt_templates/heads.prototxt.j2 that read the "label" blob.
LABEL_HEADS = {"cross_entropy", "step_classifier"}


class GenerateError(Exception):
    """A network or solver that cannot be generated; the message says why."""


def blocks_per_stage(depth):
    if depth < 8 or (depth - 2) % 6:
        raise GenerateError(f"depth {depth} is not 6n+2 with n >= 1 (8, 14, 20, 26, 32, ...)")
    return (depth - 2) // 6


def bn_fraction_for(scale):
    """BatchNorm's running statistics average over about 1/(1-f) iterations; a
    schedule scaled by `scale` gets a window scaled alike (caffe-facts.md: 0.999
    lags far behind the weights over a few hundred iterations)."""
    return round(min(0.9999, max(0.5, 1 - (1 - BN_MOVING_AVERAGE_FRACTION) / scale)), 6)


@dataclass
class Block:
    name: str
    bottom: str
    width: int
    stride: int
    shortcut: str  # "identity", "projection" or "zero_pad"


@dataclass
class ResNet:
    """A 6n+2 ResNet whose layer and blob names start with `role`.

    upto: build only the first `upto` residual blocks and no classifier
    (a teacher cut at its hint layer, a student cut at its guided layer)."""
    role: str
    depth: int
    widths: tuple
    num_classes: int
    shortcut: str = "projection"
    frozen: bool = False
    upto: int = None
    train_only: bool = False  # left out of the test passes (render_net decides)
    bn_moving_average_fraction: float = BN_MOVING_AVERAGE_FRACTION

    def __post_init__(self):
        self.n = blocks_per_stage(self.depth)
        self.widths = tuple(int(w) for w in self.widths)
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise GenerateError(f"widths must be three positive numbers, got {self.widths}")
        if self.shortcut not in SHORTCUTS:
            raise GenerateError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got '{self.shortcut}'")
        if self.shortcut == "zero_pad" and any(b != 2 * a for a, b in zip(self.widths, self.widths[1:])):
            raise GenerateError(f"zero-padding shortcuts need each stage twice as wide as the last, got {self.widths}")
        if self.upto is not None and not 1 <= self.upto <= 3 * self.n:
            raise GenerateError(f"upto must be a block number from 1 to {3 * self.n}, got {self.upto}")

    @property
    def blocks(self):
        blocks, bottom, width_in = [], f"{self.role}/conv1", self.widths[0]
        for stage, width in enumerate(self.widths, start=1):
            for index in range(1, self.n + 1):
                stride = 2 if stage > 1 and index == 1 else 1
                changes = stride != 1 or width_in != width
                name = f"{self.role}/stage{stage}/block{index}"
                blocks.append(Block(name, bottom, width, stride, self.shortcut if changes else "identity"))
                bottom, width_in = name, width
        return blocks[:self.upto]

    @property
    def classifier(self):
        return self.upto is None

    @property
    def logits(self):
        return f"{self.role}/fc"

    def stage_output(self, stage):
        """The blob a stage ends in: the last block of stage 1, 2 or 3."""
        return f"{self.role}/stage{stage}/block{self.n}"


@dataclass
class DataSpec:
    """Where a net reads its data and how Caffe transforms it. With
    input_shape set, the net reads Input blobs instead (for checks and counts)."""
    train_lmdb: str = ""
    test_lmdb: str = ""
    batch_size: int = 64
    test_batch_size: int = 100
    crop_size: int = 0
    mirror: bool = False
    mean: list = None
    scale: float = 1.0
    test_count: int = 0
    num_classes: int = 0
    input_shape: list = None

    @classmethod
    def from_manifest(cls, folder, schedule_values):
        """The data of a prepared folder, batched as a schedule() says."""
        folder = Path(folder).resolve()
        m = json.loads((folder / "manifest.json").read_text())
        test_batch = max(d for d in range(1, min(schedule_values["test_batch_at_most"], m["test_count"]) + 1)
                         if m["test_count"] % d == 0)
        return cls(str(folder / "train_lmdb"), str(folder / "test_lmdb"), schedule_values["batch_size"], test_batch,
                   m["image_size"] if m["train_pad"] else 0, m["mirror"], m["mean"], m["scale"],
                   m["test_count"], m["num_classes"])

    @classmethod
    def input_only(cls, channels, image_size, num_classes, batch_size=2):
        return cls(batch_size=batch_size, num_classes=num_classes,
                   input_shape=[batch_size, channels, image_size, image_size])

    @property
    def test_iter(self):
        return self.test_count // self.test_batch_size if self.test_count else 1


@dataclass
class Head:
    """A loss or metric on top of the nets; `kind` names a macro of heads.prototxt.j2."""
    kind: str
    name: str
    weight: float = 1.0
    logits: str = ""
    extra: dict = field(default_factory=dict)
    train_only: bool = False  # reads a net left out of the test passes (render_net decides)

    @property
    def roles(self):
        """The roles ("teacher", "student") of the blobs this head reads."""
        blobs = [self.logits] + [self.extra.get(k) for k in ("teacher_logits", "hint", "guided")]
        return {blob.split("/")[0] for blob in blobs if blob}


def schedule_table():
    return json.loads(SCHEDULES.read_text())


def schedule(dataset, kind="scratch", scale=1.0, max_iter=None):
    """The solver values of a stage kind for a dataset, iteration counts times
    scale. max_iter (at the paper's scale) is given where a method sets it.
    A test_interval of 0 means no test passes."""
    table = schedule_table()
    if dataset not in table[kind]:
        raise GenerateError(f"no '{kind}' schedule for dataset '{dataset}' in {SCHEDULES}")
    s = {k: v for k, v in table["common"].items() if k != "paper"}
    s.update({k: v for k, v in table[kind][dataset].items() if k != "paper"})
    if max_iter is not None:
        s["max_iter"] = max_iter
    s.setdefault("test_interval", 0)
    for key in ("max_iter", "test_interval", "snapshot", "display"):
        s[key] = scaled(s[key], scale) if s[key] else 0
    s["stepvalue"] = [scaled(v, scale) for v in s.get("stepvalue", [])]
    s["test_batch_at_most"] = table["test"]["batch_size_at_most"]
    return s


# The lr_policy fields of a user's solver that count iterations, scaled as max_iter is.
POLICY_ITERATION_FIELDS = ("stepsize",)
POLICY_FIELDS = ("gamma", "power") + POLICY_ITERATION_FIELDS
# Fields of a user's solver that the stage sets itself (its net, tests, snapshots, seed, device),
# or that schedule() carries; every other field set there (clip_gradients, iter_size, Adam's
# momentum2, ...) goes into the stage's solver as it is written.
STAGE_SOLVER_FIELDS = {"net", "net_param", "train_net", "test_net", "train_net_param", "test_net_param",
                       "train_state", "test_state", "test_iter", "test_interval", "test_compute_loss",
                       "test_initialization", "snapshot", "snapshot_prefix", "snapshot_diff", "snapshot_format",
                       "snapshot_after_train", "solver_mode", "device_id", "random_seed", "type", "solver_type",
                       "base_lr", "lr_policy", "momentum", "weight_decay", "max_iter", "stepvalue", "display",
                       *POLICY_FIELDS}


def user_schedule(path, scale):
    """The values of a user's solver prototxt as schedule() gives them: any lr_policy
    Caffe has, its iteration counts times scale (unscaled_max_iter keeps the original)."""
    try:
        p = validate(Path(path).read_text(), "SolverParameter", whose="a")
    except (OSError, GenerateError) as e:
        raise GenerateError(f"--solver {path}: {e}") from None
    if not p.max_iter:
        raise GenerateError(f"--solver {path}: no max_iter")
    def real(value):  # protobuf holds floats in 32 bits: 0.001 comes back as 0.0010000000474974513
        return float(f"{value:.7g}")
    s = {"type": p.type or "SGD", "base_lr": real(p.base_lr), "lr_policy": p.lr_policy or "fixed",
         "momentum": real(p.momentum), "weight_decay": real(p.weight_decay), "max_iter": scaled(p.max_iter, scale),
         "unscaled_max_iter": p.max_iter, "unscaled_stepvalue": list(p.stepvalue),
         "stepvalue": [scaled(v, scale) for v in p.stepvalue],
         "snapshot": scaled(p.snapshot or p.max_iter, scale)}
    for key in ("test_interval", "display"):  # unset: the dataset's, as schedule() gives them
        if getattr(p, key):
            s[key] = scaled(getattr(p, key), scale)
    for key in POLICY_FIELDS:
        if p.HasField(key):
            value = getattr(p, key)
            s[key] = scaled(value, scale) if key in POLICY_ITERATION_FIELDS else real(value)
    from google.protobuf import text_format
    rest = engine.caffe_pb2().SolverParameter()
    for descriptor, value in p.ListFields():
        if descriptor.name not in STAGE_SOLVER_FIELDS:
            if descriptor.label == descriptor.LABEL_REPEATED:
                getattr(rest, descriptor.name).extend(value)
            else:
                setattr(rest, descriptor.name, value)
    s["extra"] = text_format.MessageToString(rest).strip()
    return s


scaled = iterations.scaled


def quick_scale():
    return json.loads(SCHEDULES.read_text())["quick"]["scale"]


_env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                          trim_blocks=False, lstrip_blocks=False, keep_trailing_newline=True)


def validate(text, message="NetParameter", whose="generated"):
    """Parses prototxt text with Caffe's own protobuf definitions."""
    from google.protobuf import text_format
    try:
        return text_format.Parse(text, getattr(engine.caffe_pb2(), message)())
    except text_format.ParseError as e:
        raise GenerateError(f"{whose} {message} does not parse: {e}") from None


def with_input_layer(text, shape, force_backward=False):
    """A train_val net's text with its Data layers replaced by one Input layer
    whose tops "data" and "label" hold a batch of `shape` (N, C, H, W): for
    benchmarks and engine comparisons that feed the same arrays to every net
    (BVLC Caffe serves one LMDB source per process). force_backward also
    computes the gradient of the input."""
    from google.protobuf import text_format
    net = validate(text)
    layers = [layer for layer in net.layer if layer.type != "Data"]
    del net.layer[:]
    data = net.layer.add(name="data", type="Input", top=["data", "label"])
    data.input_param.shape.add(dim=shape)
    data.input_param.shape.add(dim=shape[:1])
    net.layer.extend(layers)
    net.force_backward = force_backward
    return text_format.MessageToString(net)


def in_every_phase(text):
    """A train_val net's text with every layer but its Data layers in both phases: its test
    passes as they were before render_net left a frozen teacher out of them."""
    from google.protobuf import text_format
    net = validate(text)
    for layer in net.layer:
        if layer.type != "Data":
            del layer.include[:]
    return text_format.MessageToString(net)


def render_net(name, data, nets, heads, comment=""):
    """A train_val net. Where the test passes measure a net's accuracy, a frozen net they
    do not read (the teacher beside its student) and the heads that read it (KD, hints)
    are TRAIN-only: the test passes then cost the student's forward pass alone."""
    tested = [head.logits for head in heads if head.kind in LABEL_HEADS]
    reads_label = bool(tested)
    untested = {net.role for net in nets
                if tested and net.frozen and not any(logits.startswith(f"{net.role}/") for logits in tested)}
    nets = [replace(net, train_only=net.role in untested) for net in nets]
    heads = [replace(head, train_only=bool(head.roles & untested)) for head in heads]
    text = _env.get_template("train_val.prototxt.j2").render(
        name=name, data=data, nets=nets, heads=heads, comment=comment, reads_label=reads_label)
    validate(text, "NetParameter")
    return text


def min_test_interval(data, batch_size):
    """Iterations between test passes below which a pass over the test set costs
    more than a quarter of the training in between (forward+backward is about
    three forwards): the floor under a scaled-down test interval."""
    return math.ceil(data.test_count / (0.75 * batch_size)) if data.test_count else 1


def render_solver(net_path, schedule_values, data, random_seed, snapshot_prefix, comment=""):
    s = dict(schedule_values, net=net_path, test_iter=data.test_iter, random_seed=random_seed,
             snapshot_prefix=snapshot_prefix)
    # Caffe's Solve() tests after the last iteration only when the interval divides max_iter,
    # and the paper reports the accuracy at the last iteration.
    if s["test_interval"]:
        wanted = max(s["test_interval"], min_test_interval(data, s["batch_size"]))
        s["test_interval"] = min(d for d in range(wanted, s["max_iter"] + 1) if s["max_iter"] % d == 0) \
            if wanted <= s["max_iter"] else s["max_iter"]
    text = _env.get_template("solver.prototxt.j2").render(s=s, comment=comment)
    validate(text, "SolverParameter")
    return text


def built_net(net_text):
    """A caffe.Net (TEST phase) Caffe builds from prototxt text."""
    import tempfile
    caffe = engine.import_caffe()
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
        f.write(net_text)
        f.flush()
        return caffe.Net(f.name, caffe.TEST)


def param_shapes(net_text):
    """{layer: [blob shapes]} of the layers with parameters of a rendered net."""
    return {name: [tuple(b.data.shape) for b in blobs] for name, blobs in built_net(net_text).params.items()}


def count_learned_params(net_text):
    """Learned parameters of a rendered net (conv, Scale, FC; not BatchNorm's
    running statistics), counted on a caffe.Net Caffe builds from the text."""
    net = built_net(net_text)
    return sum(blob.data.size for name, blobs in net.params.items()
               for blob in blobs if net.layer_dict[name].type != "BatchNorm")
