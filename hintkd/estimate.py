"""How long a study's unfinished stages will take on this machine, and what data they need.

A stage's speed (seconds per training iteration) is, in this order: what its own
summary or Caffe log measured here; what a finished stage of the same kind
measured (a teacher, the student alone, Stage 1 step k, Stage 2: Nets 1-3 of
every method share one speed); else a short timing of its net on this machine
(one warm-up and two forward/backward passes on an Input-fed copy at the
stage's batch size). Test passes are added at a third of a training step per
batch (a forward pass, no backward).
"""
import hashlib
import json
import re
import tempfile
import time

from hintkd import caffelog, datasets, engine, lmdb_data, netgen, train

TIMED_ITERATIONS = 2


def kind_of(folder):
    """Stages that train the same net at the same speed share a kind: Nets 1-3 of a method."""
    if not re.match(r"stage\d", folder.name):
        return folder.name  # a net trained alone: its folder names it
    return folder.parent.name + "/" + re.sub(r"net\d+$", "net", folder.name)


def measured(folder):
    """Seconds per iteration this stage showed here, or None."""
    summary = folder / train.SUMMARY
    if summary.exists():
        return json.loads(summary.read_text()).get("seconds_per_iter")
    log = folder / "caffe.log"
    if log.exists():
        records = [r for r in caffelog.parse_file(log).train_records() if r.get("seconds") is not None]
        if len(records) >= 2 and records[-1]["iteration"] > records[0]["iteration"]:
            first, last = records[0], records[-1]
            return (last["seconds"] - first["seconds"]) / (last["iteration"] - first["iteration"])
    return None


class Estimator:
    def __init__(self):
        self.by_kind = {}
        self.timed = {}  # net text hash -> seconds per iteration

    def learn(self, folder):
        speed = measured(folder)
        if speed:
            self.by_kind.setdefault(kind_of(folder), speed)
        return speed

    def seconds_per_iter(self, planner, folder):
        """(seconds, how it was found) for one training iteration of a stage."""
        speed = self.learn(folder)
        if speed:
            return speed, "measured"
        if kind_of(folder) in self.by_kind:
            return self.by_kind[kind_of(folder)], "measured on a stage like it"
        return self.time_net(planner, folder), "timed now"

    def time_net(self, planner, folder):
        name, nets, heads, sched = planner.parts[folder]
        shape = {**datasets.dataset_info(planner.opts.dataset), **planner.manifest}  # a prepared folder knows best
        data = netgen.DataSpec.input_only(shape["channels"], shape["image_size"], shape["num_classes"],
                                          batch_size=sched["batch_size"])
        text = netgen.render_net(name, data, nets, heads)
        key = hashlib.sha256(text.encode()).hexdigest()
        if key not in self.timed:
            caffe = engine.import_caffe()
            caffe.set_mode_cpu()
            with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
                f.write(text)
                f.flush()
                net = caffe.Net(f.name, caffe.TRAIN)
            net.forward()
            net.backward()
            started = time.perf_counter()
            for _ in range(TIMED_ITERATIONS):
                net.forward()
                net.backward()
            self.timed[key] = (time.perf_counter() - started) / TIMED_ITERATIONS
        return self.timed[key]


def stage_seconds(planner, folder, done, total, per_iter):
    """Training left, plus the test passes left at a third of a step per test batch."""
    _, _, _, sched = planner.parts[folder]
    seconds = (total - done) * per_iter
    test_count = planner.manifest.get("test_count")
    if sched.get("test_interval") and test_count:
        passes = (total - done) // sched["test_interval"] + (1 if done < total else 0)
        seconds += passes * (test_count / sched["batch_size"]) * per_iter / 3
    return seconds


def data_needs(dataset, data_dir, source):
    """One line: where the study's data comes from."""
    if lmdb_data.is_prepared(data_dir):
        m = lmdb_data.read_manifest(data_dir)
        return f"{dataset}: prepared at {data_dir} ({m['train_count']} train, {m['test_count']} test images)"
    official = datasets.dataset_info(dataset)["official"]
    if official["format"] == "sklearn-digits":
        return f"{dataset}: bundled with scikit-learn; prepared into {data_dir} first (seconds)"
    if source:
        return f"{dataset}: prepared from {source} into {data_dir} first"
    if official["format"] == "image-folder":
        return f"{dataset}: needs --source PATH (an image folder or .tar.gz); nothing to download"
    return (f"{dataset}: downloaded from {official['url']} (MD5 {official['md5']}) and prepared into {data_dir} "
            "first; offline, give --source PATH (the archive or its folder)")


def hms(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
