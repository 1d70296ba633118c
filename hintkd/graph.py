"""Every stage a study needs, each once, with the stages it waits for; run up to K at once.

A stage waits for the stages whose weights it starts from (the "init" of its
stage.json: a teacher, the previous layer-wise step). A stage that several runs
share (the teacher, the student alone) is one node. What is finished is decided
from the files on disk (summary.json), so a graph built again after an
interruption goes on where the last one stopped. Each stage runs as its own
`python3 -m hintkd.train` process, with cores / K OpenMP threads (OpenMP
threads that share cores with another busy process lose most of their speed);
the stage lock in hintkd.train keeps two processes off one stage.
"""
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hintkd import engine, plan, train

PROGRESS_LOG = "progress.log"  # a running stage's console lines
STATUS_EVERY = 30  # seconds between status lines


@dataclass
class Node:
    folder: Path
    label: str
    total: int
    needs: list
    methods: list = field(default_factory=list)


def build(study, write=False):
    """{stage folder: Node} of every method of the study, in training order."""
    nodes = {}
    for method in study.methods():
        planner = plan.planned(study.run_options(method), write)
        for folder in planner.stages:
            node = nodes.setdefault(folder, Node(folder, planner.labels[folder], planner.iterations_of[folder],
                                                 planner.needs[folder]))
            node.methods.append(method)
    return nodes


def threads_per_stage(jobs):
    """OMP_NUM_THREADS as the user set it, else the cores shared out over the jobs."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))


class Runner:
    """Runs a graph's unfinished stages, up to `jobs` at once, as their inputs finish."""

    def __init__(self, nodes, jobs=1, gpu=None, out=sys.stdout):
        self.nodes, self.jobs, self.gpu, self.out = nodes, jobs, gpu, out
        self.running, self.failed, self.cancelled = {}, {}, set()
        self.last_status = 0.0

    def state(self, folder):
        if train.is_finished(folder):
            return "done"
        if folder in self.running:
            return "running"
        if folder in self.failed:
            return "failed"
        if folder in self.cancelled:
            return "cancelled"
        return "waiting"

    def ready(self):
        return [f for f, n in self.nodes.items() if self.state(f) == "waiting"
                and all(train.is_finished(need) for need in n.needs)]

    def say(self, text):
        print(f"[graph] {text}", file=self.out, flush=True)

    def start(self, folder):
        command = [engine.SYSTEM_PYTHON, "-m", "hintkd.train", str(folder)]
        command += ["--gpu", str(self.gpu)] if self.gpu is not None else []
        env = dict(os.environ, PYTHONPATH=str(engine.REPO), OMP_NUM_THREADS=threads_per_stage(self.jobs))
        log = open(folder / PROGRESS_LOG, "a")
        self.running[folder] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        self.say(f"started {self.nodes[folder].label} ({folder}); its progress: {folder / PROGRESS_LOG}")

    def reap(self):
        for folder, (process, log) in list(self.running.items()):
            if process.poll() is None:
                continue
            log.close()
            del self.running[folder]
            if process.returncode == 0 and train.is_finished(folder):
                self.say(f"finished {self.nodes[folder].label}")
                continue
            self.failed[folder] = process.returncode
            self.say(f"FAILED {self.nodes[folder].label} (exit {process.returncode}); "
                     f"its log: {folder / 'caffe.log'}, its console: {folder / PROGRESS_LOG}")
            self.cancel_dependents(folder)

    def cancel_dependents(self, failed):
        changed = True
        while changed:
            changed = False
            for folder, node in self.nodes.items():
                if self.state(folder) == "waiting" and any(n == failed or n in self.cancelled or n in self.failed
                                                           for n in node.needs):
                    self.cancelled.add(folder)
                    self.say(f"cancelled {node.label}: it needs {self.nodes[failed].label}, which failed")
                    changed = True

    def status(self, force=False):
        if not force and time.time() - self.last_status < STATUS_EVERY:
            return
        self.last_status = time.time()
        counts = {}
        for folder in self.nodes:
            counts[self.state(folder)] = counts.get(self.state(folder), 0) + 1
        self.say(", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "running", "waiting", "failed", "cancelled")))
        for folder in self.running:
            lines = (folder / PROGRESS_LOG).read_text(errors="replace").strip().splitlines()
            self.say(f"  {lines[-1] if lines else self.nodes[folder].label}")

    def run(self):
        """Runs until nothing more can start; returns True when every stage is done."""
        self.status(force=True)
        try:
            while True:
                self.reap()
                for folder in self.ready()[:self.jobs - len(self.running)]:
                    self.start(folder)
                if not self.running:
                    break
                self.status()
                time.sleep(0.2)
        finally:
            for process, log in self.running.values():  # interrupted: the stages resume next time
                process.terminate()
                process.wait()
                log.close()
        self.status(force=True)
        return all(train.is_finished(f) for f in self.nodes)
