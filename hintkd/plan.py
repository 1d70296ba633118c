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
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from hintkd import datasets, netgen, read_table, train
from hintkd.atomic import write_json, write_text

METHODS = netgen.REPO / "solvers" / "methods.json"
POINT_ALIASES = {"middle": "stage2", "last": "stage3"}
PARAM_LAYER_TYPES = {"Convolution", "BatchNorm", "Scale", "InnerProduct"}


class PlanError(Exception):
    """Arguments that give no runnable plan; the message says which."""


def method_table():
    return read_table(METHODS)


@dataclass
class RunOptions:
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
        for depth in (self.teacher_depth, self.student_depth):
            netgen.blocks_per_stage(depth)
        kd = netgen.schedule_table()["kd"]
        self.defaults = {"tau": kd["tau"], "lambda": kd["lambda"], "tau_squared": kd["tau_squared"]}

    def depth(self, role):
        return self.teacher_depth if role == "teacher" else self.student_depth

    def widths(self, role):
        return self.teacher_widths if role == "teacher" else self.student_widths

    def scale_suffix(self):
        return f"-scale{self.scale:g}" if self.scale != 1 else ""

    def net_id(self, role):
        suffix = "-zeropad" if self.shortcut == "zero_pad" else ""
        return f"{role}-resnet{self.depth(role)}-w{'.'.join(map(str, self.widths(role)))}{suffix}{self.scale_suffix()}"

    def run_id(self):
        """The method's folder: depths, non-default widths, a hash of other options."""
        default = datasets.dataset_info(self.dataset)["widths"]
        name = f"{self.method}-resnet{self.teacher_depth}to{self.student_depth}"
        for role in ("teacher", "student"):
            if list(self.widths(role)) != default:
                name += f"-{role[0]}w{'.'.join(map(str, self.widths(role)))}"
        options = {k: v for k, v in (("hints", self.hints), ("hint_weights", self.hint_weights),
                                     ("tau", self.tau), ("lambda", self.kd_lambda),
                                     ("tau_squared", self.tau_squared), ("regressor", self.regressor or None),
                                     ("step_iterations", self.step_iterations),
                                     ("shortcut", None if self.shortcut == "projection" else self.shortcut),
                                     ("seed", None if self.seed == 1 else self.seed)) if v is not None}
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
    return [layer.name for layer in netgen.validate(text).layer if layer.type in PARAM_LAYER_TYPES]


class Planner:
    """Plans a method's stages; with write=False it only lists them (a dry run)."""

    def __init__(self, opts, write=True):
        self.opts = opts
        self.write = write
        manifest = Path(opts.data_dir) / "manifest.json"
        if manifest.exists():
            self.manifest = json.loads(manifest.read_text())
        elif not write and datasets.dataset_info(opts.dataset).get("num_classes"):
            self.manifest = {"num_classes": datasets.dataset_info(opts.dataset)["num_classes"]}
        else:
            raise PlanError(f"no prepared dataset at {opts.data_dir}: run data_prep/prepare.py {opts.dataset} first")
        self.run_dir = Path(opts.out) / opts.dataset / opts.run_id()
        self.finished = {}   # stage name -> (folder, student blocks it trained)
        self.stages = []
        self.iterations_of = {}  # stage folder -> its max_iter
        self.parts = {}  # stage folder -> (net name, nets, heads, schedule): what a dry run times
        self.labels = {}  # stage folder -> its label
        self.needs = {}  # stage folder -> the stage folders whose weights it starts from

    def net(self, role, frozen=False, upto=None):
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
        """The layers of `role` up to block `upto` (all, with the classifier, if None)."""
        reference = self.net(role, upto=upto)
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
                "nets": {n.role: {"depth": n.depth, "widths": list(n.widths), "shortcut": n.shortcut,
                                  "frozen": n.frozen, "blocks": len(n.blocks)} for n in nets},
                "snapshot_every": sched["snapshot"], "tests": bool(sched["test_interval"])}
        text = netgen.render_net(name, data, nets, heads, comment=spec["label"])
        solver = netgen.render_solver("train_val.prototxt", sched, data, spec["seed"], train.SNAPSHOT_PREFIX,
                                      comment=f"{spec['label']}, scale {self.opts.scale:g}")
        _write_stage(folder, spec, text, solver)

    # --- stage kinds -------------------------------------------------------

    def alone(self, entry):
        role = entry["role"]
        folder = Path(self.opts.out) / self.opts.dataset / self.opts.net_id(role)
        if self.opts.seed != 1:
            folder = folder.with_name(folder.name + f"-seed{self.opts.seed}")
        net = self.net(role)
        sched = netgen.schedule(self.opts.dataset, "scratch", self.opts.scale)
        # A net trained alone is shared by every method that needs it: it belongs to its role.
        self.add(folder, {"label": f"{role} ResNet-{net.depth}", "stage": "alone", "trains": role, "method": role,
                          "seed": self.opts.seed, "init": []},
                 [net], [netgen.Head("cross_entropy", "cross_entropy", logits=net.logits)], sched,
                 self.opts.net_id(role))
        self.finished[entry["name"]] = (folder, None)

    def hint(self, entry):
        pairs = self.opts.hints or [(p, p) for p in entry["hints"]]
        mode = entry["mode"]
        if mode == "single" and len(pairs) != 1:
            raise PlanError(f"method '{self.opts.method}' trains one hint; --hints gave {len(pairs)}")
        teacher_ref, student_ref = self.net("teacher"), self.net("student")
        blocks = [(point_block(teacher_ref, t), point_block(student_ref, s)) for t, s in pairs]
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
        regressor = netgen.schedule_table()["hint"]["regressor"]
        previous = None
        for number, (indices, max_iter) in enumerate(steps, start=1):
            teacher_cut = max(blocks[i][0] for i in indices)
            student_cut = max(blocks[i][1] for i in indices)
            teacher = self.net("teacher", frozen=True, upto=teacher_cut)
            student = self.net("student", upto=student_cut)
            heads = []
            for i in indices:
                hint_blob = teacher_ref.blocks[blocks[i][0] - 1]
                guided_blob = student_ref.blocks[blocks[i][1] - 1]
                extra = {"hint": hint_blob.name, "guided": guided_blob.name, "regressor": None}
                if hint_blob.width != guided_blob.width or self.opts.regressor:
                    if not self.opts.regressor:
                        raise PlanError(f"hint {i + 1}: the teacher has {hint_blob.width} channels there, the "
                                        f"student {guided_blob.width}; use --regressor")
                    extra["regressor"] = {"name": f"student/regressor{i + 1}", "width": hint_blob.width,
                                          "kernel_size": regressor["kernel_size"], "std": regressor["std"]}
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
            sched = netgen.schedule(self.opts.dataset, "hint", self.opts.scale, max_iter=max_iter)
            self.add(folder, {"label": label, "stage": "stage1", "trains": "student", "seed": self.opts.seed,
                              "init": init, "hints": [list(pairs[i]) for i in indices]},
                     [teacher, student], heads, sched, name)
            previous = (folder, student_cut)
        self.finished[entry["name"]] = previous

    def sl(self, entry):
        """SL-ResNet Stage 1: one step per residual module of the student."""
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
            sched = netgen.schedule(self.opts.dataset, "sl_step", self.opts.scale, max_iter=self.iterations(entry))
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
        sched = netgen.schedule(self.opts.dataset, "scratch", self.opts.scale)
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


def progress_of(planner):
    """progress() of a method already planned."""
    rows = []
    for folder in planner.stages:
        total = planner.iterations_of[folder]
        done = total if train.is_finished(folder) else train.last_snapshot(folder)
        rows.append((folder, done, total))
    return rows


def planned(opts, write):
    """The Planner after planning opts.method (its stages, their iterations and nets)."""
    planner = Planner(opts, write)
    for entry in method_table()[opts.method]["stages"]:
        kind = getattr(planner, entry["kind"], None)
        if kind is None or entry["kind"].startswith("_"):
            raise PlanError(f"method '{opts.method}': stage '{entry['name']}' has unknown kind '{entry['kind']}'")
        kind(entry)
    return planner


def options_from_args(args):
    return RunOptions(args.dataset, args.teacher_depth, args.student_depth, args.method,
                      Path(args.data), Path(args.out), args.teacher_widths, args.student_widths,
                      args.shortcut, netgen.quick_scale() if args.quick else args.scale, args.seed, args.nets,
                      args.hints, args.hint_weights, args.tau, args.kd_lambda, args.tau_squared, args.regressor,
                      args.step_iterations)


def _write_stage(folder, spec, net_text, solver_text):
    if train.is_finished(folder):
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
