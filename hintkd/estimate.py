"""How long a study's unfinished stages will take on this machine, and what data they need.

A stage's speed (seconds per training iteration) is, in this order: what its own
summary or Caffe log measured here; what a finished stage of the same kind
measured (a teacher, the student alone, Stage 1 step k, Stage 2: Nets 1-3 of
every method share one speed); else a short timing of its net on this machine
(one warm-up and two forward/backward passes on an Input-fed copy at a batch of
TIMED_BATCH, scaled to the stage's batch). Test passes are added at a third of a
training step per batch (a forward pass, no backward). Other processes' use of the
cores while nets are timed is measured too: on a busy machine the timings, and so
the estimate, are several times too long, and the dry run says so.
"""
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

from hintkd import caffelog, datasets, engine, lmdb_data, netgen, train

TIMED_ITERATIONS = 2
# Nets are timed at this batch (or the stage's, when smaller) and scaled up linearly:
# a quarter of the paper's 128 keeps the dry run of Table 1 to a few seconds.
TIMED_BATCH = 32
# Other processes' share of the cores while nets were timed above which the timing is
# reported as unreliable: two busy processes on 2 cores slow each other about 5x.
BUSY_SHARE = 0.25


def cpu_seconds_busy():
    """Seconds of CPU time every process on this machine has used (Linux /proc/stat), or None."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds():
    """CPU time of this process and of the children it has waited for."""
    return sum(os.times()[:4])


class OthersMeter:
    """How much of the cores other processes used while this one (and the children it
    waited for) measured; a with-block adds one measurement."""

    def __init__(self):
        self.others = self.wall = 0.0

    def __enter__(self):
        self._busy, self._own, self._wall = cpu_seconds_busy(), own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        busy = cpu_seconds_busy()
        if busy is not None and self._busy is not None:
            self.others += max(0.0, (busy - self._busy) - (own_cpu_seconds() - self._own))
            self.wall += time.perf_counter() - self._wall

    def share(self):
        """Other processes' CPU time over the cores' time while measuring (0 = idle machine)."""
        return self.others / (self.wall * os.cpu_count()) if self.wall else 0.0


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
        self.others = OthersMeter()  # what else ran while nets were timed

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
        batch = min(sched["batch_size"], TIMED_BATCH)
        data = netgen.DataSpec.input_only(shape["channels"], shape["image_size"], shape["num_classes"],
                                          batch_size=batch)
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
            with self.others:
                started = time.perf_counter()
                for _ in range(TIMED_ITERATIONS):
                    net.forward()
                    net.backward()
                self.timed[key] = (time.perf_counter() - started) / TIMED_ITERATIONS * sched["batch_size"] / batch
        return self.timed[key]


def busy_warning(estimator):
    """A line to print when other processes shared the cores while nets were timed, else None."""
    share = estimator.others.share()
    if share <= BUSY_SHARE:
        return None
    return (f"note: other processes used {share:.0%} of the {os.cpu_count()} cores while the nets were timed, so "
            "the times above may be several times too long; run it again on an idle machine for an estimate "
            "that holds")


def stage_seconds(planner, folder, done, total, per_iter):
    """Training left, plus the test passes left at a third of a step per test batch."""
    _, _, _, sched = planner.parts[folder]
    seconds = (total - done) * per_iter
    test_count = planner.manifest.get("test_count")
    if sched.get("test_interval") and test_count:
        passes = (total - done) // sched["test_interval"] + (1 if done < total else 0)
        seconds += passes * (test_count / sched["batch_size"]) * per_iter / 3
    return seconds


def within(limit, stages):
    """One line: what `limit` seconds finish, one stage at a time in this order, at the
    estimated speeds. stages: [(label, iterations done, total, seconds left or None)]."""
    finished, clock = [], 0.0
    for label, done, total, seconds in stages:
        if done >= total:
            continue
        if seconds is None:
            return (f"within {hms(limit)}: {len(finished)} more stage(s) finish, then {label} has no speed "
                    "measured yet (--dry-run times each net)")
        if clock + seconds > limit:
            so_far = f"within {hms(limit)}: {len(finished)} more stage(s) finish" + (
                f" ({', '.join(finished)})" if finished else "")
            if limit - clock < train.MIN_PIECE_SECONDS:  # the driver does not start it (hintkd/train.py)
                return f"{so_far}; {label} starts in the next piece"
            reached = done + int((total - done) * (limit - clock) / seconds)
            return f"{so_far}, then {label} stops at about iteration {reached} of {total}, after a snapshot"
        clock += seconds
        finished.append(label)
    return f"within {hms(limit)}: every stage finishes (about {hms(clock)})"


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
