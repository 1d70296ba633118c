"""Turns a method of solvers/methods.json into stage folders, in training order.

A stage folder holds train_val.prototxt, solver.prototxt and stage.json (what
hintkd.train needs). Folder names carry everything that changes the result
(depths, widths, shortcut, scale, seed), so a teacher trained once is found
and reused by every later run with the same settings, and runs at different
scales never share a folder.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from hintkd import datasets, netgen, train
from hintkd.atomic import write_json, write_text

METHODS = netgen.REPO / "solvers" / "methods.json"


class PlanError(Exception):
    """Arguments that give no runnable plan; the message says which."""


def method_table():
    table = json.loads(METHODS.read_text())
    table.pop("_about")
    return table


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

    def __post_init__(self):
        methods = method_table()
        if self.method not in methods:
            raise PlanError(f"unknown method '{self.method}' (known: {', '.join(methods)})")
        if self.scale <= 0:
            raise PlanError(f"--scale must be positive, got {self.scale}")
        default = datasets.dataset_info(self.dataset)["widths"]
        self.teacher_widths = tuple(self.teacher_widths or default)
        self.student_widths = tuple(self.student_widths or default)
        for depth in (self.teacher_depth, self.student_depth):
            netgen.blocks_per_stage(depth)

    def depth(self, role):
        return self.teacher_depth if role == "teacher" else self.student_depth

    def widths(self, role):
        return self.teacher_widths if role == "teacher" else self.student_widths

    def net_id(self, role):
        suffix = "-zeropad" if self.shortcut == "zero_pad" else ""
        if self.scale != 1:
            suffix += f"-scale{self.scale:g}"
        return f"{role}-resnet{self.depth(role)}-w{'.'.join(map(str, self.widths(role)))}{suffix}"


def plan(opts):
    """Writes every stage folder of opts.method; returns them in training order."""
    manifest = json.loads((Path(opts.data_dir) / "manifest.json").read_text())
    stages = []
    for stage in method_table()[opts.method]["stages"]:
        if "alone" in stage:
            stages.append(_alone_stage(opts, manifest, stage["alone"]))
        else:
            raise PlanError(f"method '{opts.method}': stage '{stage['name']}' has no known kind")
    return stages


def _alone_stage(opts, manifest, role):
    """A network trained alone with cross-entropy (the paper's 'original ResNet')."""
    folder = Path(opts.out) / opts.dataset / (opts.net_id(role) + (f"-seed{opts.seed}" if opts.seed != 1 else ""))
    net = netgen.ResNet(role, opts.depth(role), opts.widths(role), manifest["num_classes"], opts.shortcut,
                        bn_moving_average_fraction=netgen.bn_fraction_for(opts.scale))
    sched = netgen.schedule(opts.dataset, "scratch", opts.scale)
    data = netgen.DataSpec.from_manifest(opts.data_dir, sched["batch_size"], sched["test_batch_at_most"])
    label = f"{role} ResNet-{net.depth}"
    spec = {
        "label": label, "dataset": opts.dataset, "method": opts.method, "stage": "alone",
        "trains": role, "seed": opts.seed, "scale": opts.scale,
        "nets": {role: {"depth": net.depth, "widths": list(net.widths), "shortcut": net.shortcut}},
        "init": [], "snapshot_every": sched["snapshot"],
    }
    heads = [netgen.Head("cross_entropy", "loss", logits=net.logits)]
    _write_stage(folder, spec,
                 netgen.render_net(opts.net_id(role), data, [net], heads, comment=f"{label} alone on {opts.dataset}"),
                 netgen.render_solver("train_val.prototxt", sched, data, opts.seed, train.SNAPSHOT_PREFIX,
                                      comment=f"scratch schedule for {opts.dataset}, scale {opts.scale:g}"))
    return folder


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
