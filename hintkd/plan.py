"""Turns a method of solvers/methods.json into stage folders, in training order.

A stage folder holds train_val.prototxt, solver.prototxt and stage.json (what
hintkd.train needs: the label, the schedule's snapshot interval, and which
layers it inherits from which caffemodel). Folder names carry everything that
changes a result, so a teacher trained once is found and reused by every later
run with the same settings, and runs at different scales never share a folder:

    OUT/DATASET/teacher-resnet26-w16.32.64/                 a net trained alone
    OUT/DATASET/proposed-resnet26to14/stage1-step2/         Stage 1, step 2 of 3
    OUT/DATASET/proposed-resnet26to14/stage2-net3/          Stage 2 of Net 3
"""
import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from hintkd import datasets, engine, handoff, keep, netgen, read_table, stagestate, train, usernet
from hintkd.atomic import write_json, write_text

METHODS = netgen.REPO / "solvers" / "methods.json"
POINT_ALIASES = {"middle": "stage2", "last": "stage3"}
ROLES = ("teacher", "student")


class PlanError(Exception):
    """Arguments that give no runnable plan; the message says which."""


def method_table():
    return read_table(METHODS)


@dataclass
class RunOptions:
    """A run's settings. Each net is a 6n+2 ResNet (teacher_depth, student_depth) or
    a user's prototxt (teacher_net, student_net; the depth is then None)."""
    dataset: str
    teacher_depth: int
    student_depth: int
    method: str
    data_dir: Path
    out: Path
    teacher_widths: tuple = None
    student_widths: tuple = None
    shortcut: str = "projection"
    scale: float = 1.0
    seed: int = 1
    nets: int = 3
    hints: list = None          # [(teacher point, student point)], overrides the method's
    hint_weights: list = None   # a_i of eq. 7
    tau: float = None
    kd_lambda: float = None
    tau_squared: bool = None
    regressor: bool = False
    step_iterations: list = None
    teacher_net: Path = None      # a user's prototxt instead of a ResNet
    student_net: Path = None
    teacher_weights: Path = None  # a trained teacher's caffemodel: no teacher training
    solver: Path = None           # a user's solver for the stages that train with cross-entropy
    teacher_logits: str = None    # the logits blob of a user's net (default: the last InnerProduct's top)
    student_logits: str = None
    hint_lr: float = None         # the learning rate of hint stages, instead of the paper's

    def __post_init__(self):
        methods = method_table()
        if self.method not in methods:
            raise PlanError(f"unknown method '{self.method}' (known: {', '.join(methods)})")
        if self.scale <= 0:
            raise PlanError(f"--scale must be positive, got {self.scale}")
        if self.nets < 1:
            raise PlanError(f"--nets must be at least 1, got {self.nets}")
        default = datasets.dataset_info(self.dataset)["widths"]
        self.teacher_widths = tuple(self.teacher_widths or default)
        self.student_widths = tuple(self.student_widths or default)
        for role in ROLES:
            if self.user_net(role) is None:
                netgen.blocks_per_stage(self.depth(role))
            elif self.depth(role) is not None:
                raise PlanError(f"the {role} is a depth or a prototxt, not both")
        kd = netgen.schedule_table()["kd"]
        self.defaults = {"tau": kd["tau"], "lambda": kd["lambda"], "tau_squared": kd["tau_squared"]}

    def depth(self, role):
        return self.teacher_depth if role == "teacher" else self.student_depth

    def user_net(self, role):
        return self.teacher_net if role == "teacher" else self.student_net

    def logits(self, role):
        return self.teacher_logits if role == "teacher" else self.student_logits

    def net_name(self, role):
        """resnet26, or the stem of a user's prototxt."""
        path = self.user_net(role)
        return Path(path).stem if path else f"resnet{self.depth(role)}"

    def widths(self, role):
        return self.teacher_widths if role == "teacher" else self.student_widths

    def scale_suffix(self):
        return f"-scale{self.scale:g}" if self.scale != 1 else ""

    def net_id(self, role):
        """The folder of a net trained alone (shared by every run that needs it)."""
        if role == "teacher" and self.teacher_weights:  # measured, not trained: no scale, no solver
            return f"teacher-{self.net_name(role)}-given{usernet.file_digest(self.teacher_weights)}"
        if self.user_net(role):
            name = f"{role}-{self.net_name(role)}-{usernet.file_digest(self.user_net(role))}"
            if self.logits(role):
                name += f"-logits.{self.logits(role).replace('/', '.')}"
        else:
            suffix = "-zeropad" if self.shortcut == "zero_pad" else ""
            name = f"{role}-resnet{self.depth(role)}-w{'.'.join(map(str, self.widths(role)))}{suffix}"
        if self.solver:
            name += f"-solver{usernet.file_digest(self.solver)}"
        return name + self.scale_suffix()

    def run_id(self):
        """The method's folder: depths, non-default widths, a hash of other options."""
        default = datasets.dataset_info(self.dataset)["widths"]
        if self.teacher_net or self.student_net:
            name = f"{self.method}-{self.net_name('teacher')}-to-{self.net_name('student')}"
        else:
            name = f"{self.method}-resnet{self.teacher_depth}to{self.student_depth}"
        for role in ROLES:
            if not self.user_net(role) and list(self.widths(role)) != default:
                name += f"-{role[0]}w{'.'.join(map(str, self.widths(role)))}"
        options = {k: v for k, v in (("hints", self.hints), ("hint_weights", self.hint_weights),
                                     ("tau", self.tau), ("lambda", self.kd_lambda),
                                     ("tau_squared", self.tau_squared), ("regressor", self.regressor or None),
                                     ("step_iterations", self.step_iterations),
                                     ("shortcut", None if self.shortcut == "projection" else self.shortcut),
                                     ("seed", None if self.seed == 1 else self.seed),
                                     *((f"{key}_sha256", usernet.file_digest(path, 16)) for key, path in (
                                         ("teacher_net", self.teacher_net), ("student_net", self.student_net),
                                         ("teacher_weights", self.teacher_weights), ("solver", self.solver))
                                       if path),
                                     ("teacher_logits", self.teacher_logits), ("student_logits", self.student_logits),
                                     ("hint_lr", self.hint_lr))
                   if v is not None}
        if options:
            name += "-" + hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
        return name + self.scale_suffix()


def point_block(net, point):
    """The residual block (1-based) whose output a hint/guided point names."""
    point = POINT_ALIASES.get(point, point)
    if m := re.fullmatch(r"stage([123])", point):
        return int(m.group(1)) * net.n
    if (m := re.fullmatch(r"block(\d+)", point)) and 1 <= int(m.group(1)) <= 3 * net.n:
        return int(m.group(1))
    raise PlanError(f"'{point}' is not a hint point of ResNet-{net.depth} "
                    f"(stage1..stage3, middle, last, block1..block{3 * net.n})")


def param_layers(text):
    """Names of the layers with learned or stored parameters in a rendered net."""
    return [layer.name for layer in netgen.validate(text).layer if layer.type in usernet.PARAM_TYPES]


@dataclass
class Point:
    """A hint or guided point of one net: where to cut the net, the stage-net blob, its shape."""
    cut: object  # a ResNet's block number, or a user's net's blob names
    blob: str
    shape: tuple  # (C, H, W) for one image, or (C,) for a vector (a user's InnerProduct top)


class Planner:
    """Plans a method's stages; with write=False it only lists them (a dry run)."""

    def __init__(self, opts, write=True, manifest=None):
        """manifest: what the data will be (classes, channels, image size), for planning before it is prepared."""
        self.opts = opts
        self.write = write
        prepared = Path(opts.data_dir) / "manifest.json"
        if manifest:
            self.manifest = manifest
        elif prepared.exists():
            self.manifest = json.loads(prepared.read_text())
        elif not write and datasets.dataset_info(opts.dataset).get("num_classes"):
            self.manifest = {"num_classes": datasets.dataset_info(opts.dataset)["num_classes"]}
        else:
            raise PlanError(f"no prepared dataset at {opts.data_dir}: run data_prep/prepare.py {opts.dataset} first")
        self.run_dir = Path(opts.out) / opts.dataset / opts.run_id()
        self.user = {}  # role -> usernet.UserNet, measured on the dataset's images
        for role in ROLES:
            if opts.user_net(role):
                self.user[role] = self._load_user_net(role)
        self.finished = {}   # stage name -> (folder, student blocks it trained)
        self.stages = []
        self.iterations_of = {}  # stage folder -> its max_iter
        self.parts = {}  # stage folder -> (net name, nets, heads, schedule): what a dry run times
        self.labels = {}  # stage folder -> its label
        self.needs = {}  # stage folder -> the stage folders whose weights it starts from

    def image(self):
        """(channels, size) of the dataset's images."""
        info = datasets.dataset_info(self.opts.dataset)
        channels = self.manifest.get("channels", info.get("channels"))
        size = self.manifest.get("image_size", info.get("image_size"))
        if not (channels and size):
            raise PlanError(f"{self.opts.dataset}: the image size comes from the data; prepare it first")
        return channels, size

    def _load_user_net(self, role):
        try:
            net = usernet.UserNet.load(self.opts.user_net(role), role, self.opts.logits(role)).measure(*self.image())
        except (usernet.UserNetError, engine.EngineError) as e:
            raise PlanError(f"the {role}: {e}") from None
        classes = net.blob_shape(net.logits_blob)
        if classes != (self.manifest["num_classes"],):
            raise PlanError(f"the {role}'s logits '{net.logits_blob}' have shape {classes}, the dataset has "
                            f"{self.manifest['num_classes']} classes")
        return net

    def title(self, role):
        net = self.user.get(role)
        return net.title if net else f"ResNet-{self.opts.depth(role)}"

    def net(self, role, frozen=False, upto=None):
        """The role's net, frozen or not, cut at `upto` (a block number, or blob names) if given."""
        if role in self.user:
            net = replace(self.user[role], frozen=frozen)
            return net if upto is None else net.upto(upto)
        return netgen.ResNet(role, self.opts.depth(role), self.opts.widths(role), self.manifest["num_classes"],
                             self.opts.shortcut, frozen=frozen, upto=upto,
                             bn_moving_average_fraction=netgen.bn_fraction_for(self.opts.scale))

    def data(self, sched):
        return netgen.DataSpec.from_manifest(self.opts.data_dir, sched)

    def iterations(self, entry):
        values = entry["iterations"]
        if self.opts.dataset not in values:
            raise PlanError(f"method '{self.opts.method}' gives no iterations for '{self.opts.dataset}'")
        return values[self.opts.dataset]

    def inherit(self, weights, role, upto, frozen=False):
        """The layers of `role` up to `upto` (all, with the classifier, if None)."""
        reference = self.net(role, upto=upto)
        if role in self.user:
            return {"weights": str(weights), "layers": reference.param_layers(), "frozen": frozen}
        text = netgen.render_net("reference", netgen.DataSpec.input_only(1, 8, self.manifest["num_classes"]),
                                 [reference], [])
        return {"weights": str(weights), "layers": param_layers(text), "frozen": frozen}

    def teacher_init(self):
        teacher = self.finished.get("teacher")
        if teacher is None:
            raise PlanError(f"method '{self.opts.method}' needs a 'teacher' stage before this one")
        return teacher[0] / train.FINAL_WEIGHTS

    def student_init(self, entry):
        if "from" not in entry:
            return []
        folder, blocks = self.finished[entry["from"]]
        return [self.inherit(folder / train.FINAL_WEIGHTS, "student", blocks)]

    def add(self, folder, spec, nets, heads, sched, name):
        self.stages.append(folder)
        self.iterations_of[folder] = sched["max_iter"]
        self.parts[folder] = (name, nets, heads, sched)
        self.labels[folder] = spec["label"]
        self.needs[folder] = [Path(i["weights"]).parent for i in spec.get("init", [])]
        if not self.write:
            return
        data = self.data(sched)
        spec = {"method": self.opts.method, **spec, "dataset": self.opts.dataset, "scale": self.opts.scale,
                "nets": {n.role: _describe(n) for n in nets},
                "snapshot_every": sched["snapshot"], "tests": bool(sched["test_interval"])}
        text = netgen.render_net(name, data, nets, heads, comment=spec["label"])
        solver = netgen.render_solver("train_val.prototxt", sched, data, spec["seed"], train.SNAPSHOT_PREFIX,
                                      comment=f"{spec['label']}, scale {self.opts.scale:g}")
        _write_stage(folder, spec, text, solver)

    # --- stage kinds -------------------------------------------------------

    def schedule(self, kind, max_iter=None):
        """A stage kind's solver values: the paper's for the dataset, or with --solver the
        user's for the stages that train with cross-entropy, and for hint stages the paper's
        hint schedule in proportion to the user's: its iterations as the user's max_iter is
        to the paper's, its learning rate as the user's base_lr is to the paper's."""
        if kind == "hint" and self.opts.hint_lr:
            return dict(self._schedule(kind, max_iter), base_lr=self.opts.hint_lr)
        return self._schedule(kind, max_iter)

    @functools.cached_property
    def user_solver(self):
        """--solver's values, read once for every stage."""
        try:
            return netgen.user_schedule(self.opts.solver, self.opts.scale)
        except netgen.GenerateError as e:
            raise PlanError(str(e)) from None

    def _schedule(self, kind, max_iter):
        if not self.opts.solver:
            return netgen.schedule(self.opts.dataset, kind, self.opts.scale, max_iter=max_iter)
        user = dict(self.user_solver)
        batch = self.user["student"].train_batch if "student" in self.user else None
        if kind in ("scratch", "sl_step"):
            if max_iter is not None:
                user["max_iter"] = netgen.scaled(max_iter, self.opts.scale)
            return {**netgen.schedule(self.opts.dataset, kind, self.opts.scale), **user,
                    **({"batch_size": batch} if batch else {})}
        paper = netgen.schedule(self.opts.dataset, "scratch")
        ratio = user["unscaled_max_iter"] / paper["max_iter"]
        sched = netgen.schedule(self.opts.dataset, kind, self.opts.scale,
                                max_iter=max(1, round(max_iter * ratio)) if max_iter else None)
        sched["base_lr"] = float(f"{sched['base_lr'] * user['base_lr'] / paper['base_lr']:.7g}")
        sched["display"] = min(sched["display"], user.get("display", sched["display"]))
        sched["snapshot"] = min(sched["snapshot"], user["snapshot"])
        return {**sched, **({"batch_size": batch} if batch else {})}

    def alone(self, entry):
        role = entry["role"]
        folder = Path(self.opts.out) / self.opts.dataset / self.opts.net_id(role)
        given = role == "teacher" and self.opts.teacher_weights
        if self.opts.seed != 1 and not given:
            folder = folder.with_name(folder.name + f"-seed{self.opts.seed}")
        net = self.net(role)
        sched = self.schedule("scratch")
        heads = [netgen.Head("cross_entropy", "cross_entropy", logits=net.logits)]
        # A net trained alone is shared by every method that needs it: it belongs to its role.
        spec = {"label": f"{role} {self.title(role)}", "stage": "alone", "trains": role, "method": role,
                "seed": self.opts.seed, "init": []}
        if given:
            spec.update(label=f"teacher {self.title(role)} (given weights)", stage="import",
                        weights=str(Path(self.opts.teacher_weights).resolve()), rename=self.given_layers(net))
        elif role in self.user and (layer := self.user[role].unfilled()):
            raise PlanError(f"the {role} {self.user[role].path.name}: layer '{layer}' has no weight_filler, so Caffe "
                            "would start it at zero; give the train_val prototxt (it has the fillers)"
                            + (" or --teacher-weights" if role == "teacher" else ""))
        self.add(folder, spec, [net], heads, sched, self.opts.net_id(role))
        if given:
            self.iterations_of[folder] = 0  # measured once over the test set, not trained
        self.finished[entry["name"]] = (folder, None)

    def given_layers(self, net):
        """{stage-net layer: its layer in --teacher-weights}, every learned layer found
        with the shapes the net needs (else a one-line error naming the layer)."""
        if isinstance(net, usernet.UserNet):
            shapes = {name: shape for name, shape in net.shapes["params"].items()}
        else:
            text = netgen.render_net("reference", netgen.DataSpec.input_only(
                *self.image(), self.manifest["num_classes"]), [net], [])
            shapes = netgen.param_shapes(text)
        try:
            return handoff.match_layers(shapes, self.opts.teacher_weights, prefix=f"{net.role}/")
        except handoff.HandoffError as e:
            raise PlanError(f"--teacher-weights: {e}") from None

    def default_hints(self, entry):
        if not self.user:
            return [(p, p) for p in entry["hints"]]
        if entry["hints"] == ["last"]:  # Hint-KD+: the blobs each classifier reads
            return [tuple(self.net(role).before_classifier() if role in self.user else "last" for role in ROLES)]
        raise PlanError(f"method '{self.opts.method}' on a user's net: name its hint and guided blobs with "
                        "--hints TEACHER_BLOB:STUDENT_BLOB,... (e.g. --hints pool1:pool1,pool2:pool2)")

    def point(self, role, name):
        """A hint (teacher) or guided (student) point named on the command line."""
        net = self.net(role)
        if role in self.user:
            try:
                blob = net.check_blob(name)
            except usernet.UserNetError as e:
                raise PlanError(f"--hints: {e}") from None
            return Point((blob,), net.name(blob), net.blob_shape(blob))
        block = point_block(net, name)
        stage = (block - 1) // net.n + 1
        size = math.ceil(self.image()[1] / 2 ** (stage - 1))  # each later stage starts with stride 2
        return Point(block, net.blocks[block - 1].name, (net.blocks[block - 1].width, size, size))

    def cut(self, role, points):
        """Where a step cuts a net: the deepest block of a ResNet, every blob of a user's net."""
        if role in self.user:
            return tuple(dict.fromkeys(blob for p in points for blob in p.cut))
        return max(p.cut for p in points)

    def regressor_for(self, number, hint, guided):
        """A hint's regressor (sec. 4), or None where the blobs already match."""
        if len(hint.shape) != len(guided.shape) or hint.shape[1:] != guided.shape[1:]:
            raise PlanError(f"hint {number}: the teacher's '{hint.blob}' has shape {hint.shape}, the student's "
                            f"'{guided.blob}' {guided.shape}; a hint pairs blobs of the same spatial size")
        users = bool(self.user)  # a user's nets get a regressor wherever the channels differ
        if hint.shape == guided.shape and not self.opts.regressor:
            return None
        if len(hint.shape) != 3 and users:
            raise PlanError(f"hint {number}: '{hint.blob}' {hint.shape} and '{guided.blob}' {guided.shape} differ "
                            "and are not images: a convolutional regressor cannot map one to the other")
        if not (self.opts.regressor or users):
            raise PlanError(f"hint {number}: the teacher has {hint.shape[0]} channels there, the "
                            f"student {guided.shape[0]}; use --regressor")
        regressor = netgen.schedule_table()["hint"]["regressor"]
        return {"name": f"student/regressor{number}", "width": hint.shape[0],
                "kernel_size": regressor["kernel_size"], "std": regressor["std"]}

    def hint(self, entry):
        pairs = self.opts.hints or self.default_hints(entry)
        mode = entry["mode"]
        if mode == "single" and len(pairs) != 1:
            raise PlanError(f"method '{self.opts.method}' trains one hint; --hints gave {len(pairs)}")
        points = [(self.point("teacher", t), self.point("student", s)) for t, s in pairs]
        weights = self.opts.hint_weights or [1.0] * len(pairs)
        if len(weights) != len(pairs):
            raise PlanError(f"{len(weights)} hint weights for {len(pairs)} hints")
        iterations = self.iterations(entry)
        if mode == "layerwise":
            if self.opts.step_iterations:
                iterations = self.opts.step_iterations
            elif len(iterations) != len(pairs):  # the paper's split is for N = 3: share its total
                iterations = [sum(iterations) // len(pairs)] * len(pairs)
            if len(iterations) != len(pairs):
                raise PlanError(f"{len(iterations)} step iterations for {len(pairs)} hints")
            steps = [([i], iterations[i]) for i in range(len(pairs))]
        else:
            steps = [(list(range(len(pairs))), iterations)]
        previous = None
        for number, (indices, max_iter) in enumerate(steps, start=1):
            teacher_cut = self.cut("teacher", [points[i][0] for i in indices])
            student_cut = self.cut("student", [points[i][1] for i in indices])
            teacher = self.net("teacher", frozen=True, upto=teacher_cut)
            student = self.net("student", upto=student_cut)
            heads = []
            for i in indices:
                hint_point, guided_point = points[i]
                extra = {"hint": hint_point.blob, "guided": guided_point.blob,
                         "regressor": self.regressor_for(i + 1, hint_point, guided_point)}
                weight = weights[i] / len(indices) if mode == "concurrent" else 1.0
                heads.append(netgen.Head("hint", f"hint{i + 1}", weight, extra=extra))
            name = entry["name"] if len(steps) == 1 else f"{entry['name']}-step{number}"
            folder = self.run_dir / name
            init = [self.inherit(self.teacher_init(), "teacher", teacher_cut, frozen=True)]
            if previous:
                init.append(self.inherit(previous[0] / train.FINAL_WEIGHTS, "student", previous[1]))
            elif "from" in entry:
                init += self.student_init(entry)
            label = f"{self.opts.method} {entry['name']}" + (f" step {number}/{len(steps)}" if len(steps) > 1 else "")
            sched = self.schedule("hint", max_iter=max_iter)
            self.add(folder, {"label": label, "stage": "stage1", "trains": "student", "seed": self.opts.seed,
                              "init": init, "hints": [list(pairs[i]) for i in indices]},
                     [teacher, student], heads, sched, name)
            previous = (folder, student_cut)
        self.finished[entry["name"]] = previous

    def sl(self, entry):
        """SL-ResNet Stage 1: one step per residual module of the student."""
        if "student" in self.user:
            raise PlanError(f"method '{self.opts.method}' trains a ResNet's residual modules one by one: "
                            "give the student as a depth")
        student_ref = self.net("student")
        previous = None
        for block in range(1, len(student_ref.blocks) + 1):
            student = self.net("student", upto=block)
            prefix = f"student/sl{block}"
            head = netgen.Head("step_classifier", "cross_entropy", logits=f"{prefix}/fc",
                               extra={"prefix": prefix, "features": student.blocks[-1].name,
                                      "num_classes": self.manifest["num_classes"]})
            folder = self.run_dir / f"{entry['name']}-step{block}"
            init = [self.inherit(previous / train.FINAL_WEIGHTS, "student", block - 1)] if previous else []
            sched = self.schedule("sl_step", max_iter=self.iterations(entry))
            self.add(folder, {"label": f"{self.opts.method} {entry['name']} step {block}/{len(student_ref.blocks)}",
                              "stage": "stage1", "trains": "student", "seed": self.opts.seed, "init": init},
                     [student], [head], sched, folder.name)
            previous = folder
        self.finished[entry["name"]] = (previous, len(student_ref.blocks))

    def kd(self, entry):
        self._per_net(entry, with_teacher=True)

    def finetune(self, entry):
        self._per_net(entry, with_teacher=False)

    def _per_net(self, entry, with_teacher):
        """Stage 2, once per net: Net k starts from the same Stage 1 weights with seed + k - 1."""
        student = self.net("student")
        heads = [netgen.Head("cross_entropy", "cross_entropy", logits=student.logits)]
        nets, init = [student], []
        if with_teacher:
            teacher = self.net("teacher", frozen=True)
            nets.insert(0, teacher)
            init.append(self.inherit(self.teacher_init(), "teacher", None, frozen=True))
            kd = self._kd_settings(entry)
            heads.append(netgen.Head("kd", "kd", kd["lambda"], logits=student.logits,
                                     extra={"teacher_logits": teacher.logits,
                                            "param_str": json.dumps({"tau": kd["tau"],
                                                                     "tau_squared": kd["tau_squared"]})}))
        init += self.student_init(entry)
        sched = self.schedule("scratch")
        for k in range(1, self.opts.nets + 1):
            name = f"{entry['name']}-net{k}"
            self.add(self.run_dir / name,
                     {"label": f"{self.opts.method} {entry['name']} net {k}", "stage": "stage2", "trains": "student",
                      "seed": self.opts.seed + k - 1, "init": init, "net": k,
                      **({"kd": self._kd_settings(entry)} if with_teacher else {})},
                     nets, heads, sched, name)

    def _kd_settings(self, entry):
        d = self.opts.defaults
        lam = entry.get("lambda", {}).get(self.opts.dataset, d["lambda"])
        return {"tau": self.opts.tau if self.opts.tau is not None else d["tau"],
                "lambda": self.opts.kd_lambda if self.opts.kd_lambda is not None else lam,
                "tau_squared": self.opts.tau_squared if self.opts.tau_squared is not None else d["tau_squared"]}


def plan(opts, write=True):
    """Writes every stage folder of opts.method; returns them in training order."""
    return planned(opts, write).stages


def progress(opts):
    """[(stage folder, iterations done, max_iter)] of a method, in training order; writes nothing."""
    return progress_of(planned(opts, write=False))


def progress_of(planner, keep_dir=None):
    """progress() of a method already planned; with keep_dir (--keep DIR), a stage the output
    folder lacks counts as far as its kept form got (what a run would restore from DIR)."""
    rows = []
    for folder in planner.stages:
        total = planner.iterations_of[folder]
        done = stagestate.iterations_done(folder, total)
        if keep_dir and not done:
            done = stagestate.iterations_done(keep.kept_folder(folder, planner.opts.out, keep_dir), total)
        rows.append((folder, done, total))
    return rows


def planned(opts, write, manifest=None):
    """The Planner after planning opts.method (its stages, their iterations and nets)."""
    planner = Planner(opts, write, manifest)
    for entry in method_table()[opts.method]["stages"]:
        kind = getattr(planner, entry["kind"], None)
        if kind is None or entry["kind"].startswith("_"):
            raise PlanError(f"method '{opts.method}': stage '{entry['name']}' has unknown kind '{entry['kind']}'")
        kind(entry)
    return planner


def _describe(net):
    """A net as stage.json records it."""
    if isinstance(net, usernet.UserNet):
        return net.describe()
    return {"depth": net.depth, "widths": list(net.widths), "shortcut": net.shortcut, "frozen": net.frozen,
            "blocks": len(net.blocks)}


def options_from_args(args):
    """RunOptions from parsed arguments; a teacher or student given as a prototxt path has no depth."""
    def split(net):
        return (None, Path(net).resolve()) if isinstance(net, Path) else (net, None)
    (teacher_depth, teacher_net), (student_depth, student_net) = split(args.teacher), split(args.student)
    return RunOptions(args.dataset, teacher_depth, student_depth, args.method,
                      Path(args.data), Path(args.out), args.teacher_widths, args.student_widths,
                      args.shortcut, netgen.quick_scale() if args.quick else args.scale, args.seed, args.nets,
                      args.hints, args.hint_weights, args.tau, args.kd_lambda, args.tau_squared, args.regressor,
                      args.step_iterations, teacher_net, student_net,
                      Path(args.teacher_weights).resolve() if args.teacher_weights else None,
                      Path(args.solver).resolve() if args.solver else None, args.teacher_logits, args.student_logits,
                      args.hint_lr)


def _write_stage(folder, spec, net_text, solver_text):
    if stagestate.is_finished(folder):
        return
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "stage.json"
    if spec_path.exists():
        earlier = json.loads(spec_path.read_text())
        if earlier != spec:
            changed = sorted(k for k in set(earlier) | set(spec) if earlier.get(k) != spec.get(k))
            raise PlanError(f"{folder} was started with other settings ({', '.join(changed)}); "
                            "remove it or choose another --out")
        if (folder / "snapshots").exists():
            return  # an interrupted stage resumes with the files it started with
    write_text(folder / "train_val.prototxt", net_text)
    write_text(folder / "solver.prototxt", solver_text)
    write_json(spec_path, spec)
