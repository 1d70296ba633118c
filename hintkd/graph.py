"""Every stage a target needs, each once, with the stages it waits for: run here K at
a time, submitted to Slurm, or shown (--status).

    python3 -m hintkd.graph DATASET T S METHOD [run_stages.sh's options]
        (run_stages.sh calls it once Caffe is built and the data prepared)

A stage waits for the stages whose weights it starts from (the "init" of its
stage.json: a teacher, the previous layer-wise step). A stage that several runs
share (the teacher, the student alone) is one node. What is finished is decided
from the files on disk (summary.json), never from a process's or a scheduler's
memory, so a graph built again after an interruption goes on where the last one
stopped. Each stage runs as its own `python3 -m hintkd.train` process, with
cores / K OpenMP threads (OpenMP threads that share cores with another busy
process lose most of their speed); the stage lock in hintkd.train keeps two
processes off one stage, so several drivers may share an output folder.
"""
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hintkd import engine, estimate, keep, options, plan, report, slurm, stagestate, summary, train
from hintkd.stagestate import is_finished

PROGRESS_LOG = "progress.log"  # a running stage's console lines, when several run at once
STATUS_EVERY = 30  # seconds between status lines
STATES = ("done", "running", "queued", "stopped", "waiting", "failed", "blocked")


@dataclass
class Node:
    folder: Path
    label: str
    total: int
    needs: list
    planner: plan.Planner  # of the first run that planned it: its schedule and data
    runs: list = field(default_factory=list)  # RunOptions of every run that needs it


def build(runs, write=False):
    """{stage folder: Node} of every run (plan.RunOptions), in training order."""
    nodes = {}
    for opts in runs:
        planner = plan.planned(opts, write)
        for folder in planner.stages:
            node = nodes.setdefault(folder, Node(folder, planner.labels[folder], planner.iterations_of[folder],
                                                 planner.needs[folder], planner))
            node.runs.append(opts)
    return nodes


def stages_of(nodes, opts):
    return [folder for folder, node in nodes.items() if opts in node.runs]


def threads_per_stage(jobs):
    """OMP_NUM_THREADS as the user set it, else the cores shared out over the jobs."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))


def say(text, out=sys.stdout):
    print(f"[graph] {text}", file=out, flush=True)


class Runner:
    """Runs a graph's unfinished stages on this machine, up to `jobs` at once, as their
    inputs finish. One at a time, a stage writes to the terminal; several at once, each
    writes to its progress.log and a status line comes every STATUS_EVERY seconds."""

    def __init__(self, nodes, jobs=1, gpus=None, out=sys.stdout, deadline=None, keep_dir=None):
        self.nodes, self.jobs, self.gpus, self.out = nodes, jobs, gpus or [], out
        self.keep_dir = keep_dir  # --keep: each stage kept there as it finishes or stops
        self.started_from = {n for node in nodes.values() for n in node.needs}  # their final weights are kept
        self.deadline = deadline  # Unix time of --time-limit, or None
        self.out_of_time = False  # a stage was left waiting (or stopped) by the time limit
        self.past_deadline = False
        self.running, self.failed, self.stopped, self.cancelled = {}, {}, set(), set()
        self.device_of = {}  # stage folder -> the GPU it was started on
        self.last_status = 0.0
        self.interrupted = False  # stopped by SIGINT or SIGTERM

    def state(self, folder):
        if is_finished(folder):
            return "done"
        for state, members in (("running", self.running), ("failed", self.failed), ("stopped", self.stopped),
                               ("cancelled", self.cancelled)):
            if folder in members:
                return state
        return "waiting"

    def ready(self):
        ready = [f for f, n in self.nodes.items() if self.state(f) == "waiting"
                 and all(is_finished(need) for need in n.needs)]
        if ready and self.deadline is not None and self.deadline - time.time() < train.MIN_PIECE_SECONDS:
            if not self.out_of_time:
                self.say(f"time limit: {max(0, self.deadline - time.time()):.0f} s left, less than a stage's "
                         f"{train.MIN_PIECE_SECONDS} s piece; {len(ready)} ready stage(s) start when run again")
            self.out_of_time = True
            return []
        return ready

    def say(self, text):
        say(text, self.out)

    def start(self, folder):
        command = [engine.SYSTEM_PYTHON, "-m", "hintkd.train", str(folder)]
        device = self.least_busy_gpu()
        command += ["--gpu", str(device)] if device is not None else []
        command += ["--stop-at", f"{self.deadline:.3f}"] if self.deadline is not None else []
        env = dict(os.environ, PYTHONPATH=str(engine.REPO), OMP_NUM_THREADS=threads_per_stage(self.jobs))
        log = open(folder / PROGRESS_LOG, "a") if self.jobs > 1 else None
        # One at a time, the stage writes to the terminal (log None: inherited).
        self.running[folder] = (subprocess.Popen(command, stdout=log, stderr=log and subprocess.STDOUT, env=env), log)
        self.device_of[folder] = device
        if log:
            self.say(f"started {self.nodes[folder].label} ({folder})" + (f" on GPU {device}" if self.gpus else "")
                     + f"; its progress: {folder / PROGRESS_LOG}")

    def least_busy_gpu(self):
        """The GPU with the fewest running stages (several stages may share one), or None on the CPU."""
        if not self.gpus:
            return None
        busy = [self.device_of[f] for f in self.running]
        return min(self.gpus, key=busy.count)

    def reap(self):
        for folder, (process, log) in list(self.running.items()):
            if process.poll() is None:
                continue
            if log:
                log.close()
            del self.running[folder]
            label = self.nodes[folder].label
            ended = train.record_exit(folder, process.returncode)
            self.keep(folder)
            if ended == "done":
                if log:
                    self.say(f"finished {label}")
            elif ended == "stopped":
                self.stopped.add(folder)
                self.out_of_time = self.out_of_time or self.deadline is not None and not self.interrupted
                self.say(f"stopped {label} after a snapshot; it resumes from there when run again")
            else:
                self.failed[folder] = process.returncode
                self.say(f"FAILED {label} (exit {process.returncode}); its log: {folder / 'caffe.log'}"
                         + (f", its console: {folder / PROGRESS_LOG}" if log else ""))
                caffe_log = folder / "caffe.log"
                if caffe_log.exists():
                    tail = caffe_log.read_text(errors="replace").splitlines()[-15:]
                    print(f"the end of {caffe_log}:", *tail, sep="\n", file=sys.stderr, flush=True)
                self.cancel_dependents(folder)

    def keep(self, folder):
        if not self.keep_dir:
            return
        node = self.nodes[folder]
        kept = keep.keep_stage(folder, node.planner.opts.out, self.keep_dir, folder in self.started_from)
        if kept:
            what = "finished" if is_finished(folder) else f"snapshot at iteration {stagestate.last_snapshot(folder)}"
            self.say(f"kept {node.label} ({what}, {keep.size(kept) / 1e6:.2f} MB): {kept}")

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
        if not force and (self.jobs == 1 or time.time() - self.last_status < STATUS_EVERY):
            return
        self.last_status = time.time()
        counts = {}
        for state in map(self.state, self.nodes):
            counts[state] = counts.get(state, 0) + 1
        self.say(", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "running", "waiting", "failed", "cancelled")))
        for folder, (_, log) in self.running.items():
            lines = (folder / PROGRESS_LOG).read_text(errors="replace").strip().splitlines() if log else []
            self.say(f"  {lines[-1] if lines else self.nodes[folder].label}")

    def run(self):
        """Runs until nothing more can start; returns True when every stage is done."""
        for folder, node in self.nodes.items():
            if is_finished(folder):
                print(f"[{node.label}] finished earlier: {folder / train.SUMMARY}", file=self.out, flush=True)
            self.keep(folder)  # what finished or stopped before, if DIR lacks it
        if self.jobs > 1:
            self.status(force=True)
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped like Ctrl-C
        try:
            while True:
                self.reap()
                for folder in self.ready()[:self.jobs - len(self.running)]:
                    self.start(folder)
                if not self.running:
                    break
                self.status()
                if self.deadline is not None and time.time() > self.deadline and not self.past_deadline:
                    # A backstop: each stage stops itself before the limit; one that did not
                    # (a step longer than any before it) is told to, and stops after that step.
                    self.out_of_time = self.past_deadline = True
                    for process, _ in self.running.values():
                        process.send_signal(signal.SIGTERM)
                time.sleep(0.2)
        except KeyboardInterrupt:
            self.interrupted = True
            self.say("interrupted: each running stage stops at its next iteration, after a snapshot")
        finally:
            signal.signal(signal.SIGTERM, previous)
            for process, log in self.running.values():  # each snapshots, then exits; it resumes next time
                process.send_signal(signal.SIGTERM)
            for folder, (process, log) in self.running.items():
                process.wait()
                if log:
                    log.close()
                self.keep(folder)  # its snapshot at the stop
        if self.jobs > 1 or self.failed:
            self.status(force=True)
        return all(is_finished(f) for f in self.nodes)


def print_status(nodes, out=sys.stdout, time_limit=None):
    """Each stage's state (with its Slurm job, when one has it), iterations and time left
    at the speed this machine or cluster measured for it or for a stage like it."""
    jobs = slurm.jobs_of(nodes)
    estimator = estimate.Estimator()
    own_speed = {folder: estimator.learn(folder) for folder in nodes}  # all learned before any is estimated
    counts, states, seconds_left, unknown, total_done = {}, {}, 0.0, 0, 0
    rows, timeline = [], []  # timeline: (label, done, total, seconds left) for estimate.within
    for folder, node in nodes.items():
        state, where = stagestate.state(folder), ""
        job = jobs.get(folder)
        if state != "done" and job:
            state = "running" if job.state in slurm.RUNNING else "queued"
            where = f"job {job.id} {job.state.lower()}"
        elif state == "failed":
            where = f"log {stagestate.failure(folder)['log']}"
        elif state == "waiting" and (stuck := [n for n in node.needs if states.get(n) in ("failed", "blocked")]):
            which = "failed" if states[stuck[0]] == "failed" else "is blocked"
            state, where = "blocked", f"needs {nodes[stuck[0]].label}, which {which}"
        elif state == "running":
            where = "on this machine"
        done = stagestate.iterations_done(folder, node.total, running=state == "running")
        total_done += done
        speed = own_speed[folder] or estimator.by_kind.get(estimate.kind_of(folder))
        if done < node.total:
            if speed:
                left = estimate.stage_seconds(node.planner, folder, done, node.total, speed)
                seconds_left += left
            else:
                unknown += 1
        else:
            left = 0.0
        states[folder] = state
        counts[state] = counts.get(state, 0) + 1
        timeline.append((node.label, done, node.total, left if done == node.total or speed else None))
        rows.append((node.label, state, f"{done}/{node.total}",
                     estimate.hms(left) if done == node.total or speed else "?", where, folder))
    widths = [max(len(str(r[i])) for r in rows + [("stage", "state", "iterations", "left", "", "")])
              for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(("stage", "state", "iterations", "left"), widths)), file=out)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + f"  {row[4]}".rstrip(), file=out)
    total = sum(n.total for n in nodes.values())
    print(f"{len(nodes)} stages: " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts.get(s)), file=out)
    unfinished = sum(1 for state in states.values() if state != "done")
    if unknown and unknown == unfinished:  # no speed measured: no estimate, rather than a zero
        left = (f"time left: not measured yet for any of the {unknown} unfinished stages "
                "(--dry-run estimates it from a short timing of each net)")
    else:
        left = (f"time left: about {estimate.hms(seconds_left)}" + (f", plus {unknown} not yet measured" if unknown else "")
                + " (one stage at a time, at the speeds measured so far)")
    print(f"iterations: {total_done}/{total}; {left}", file=out)
    if time_limit:
        print(estimate.within(time_limit, timeline), file=out)
    return counts


def finish(opts, nodes, show_comparison=True):
    """A finished run's summary, training figure and comparison with the paper."""
    summary.main([str(f) for f in stages_of(nodes, opts)])
    report.write_comparison(opts, show_comparison)


def is_done(nodes, opts):
    return all(is_finished(f) for f in stages_of(nodes, opts))


def call_started():
    """When the user's call began: run_stages.sh sets HINTKD_STARTED first thing, so a
    --time-limit includes building Caffe and preparing the data; else now."""
    return float(os.environ.get("HINTKD_STARTED") or time.time())


def execute(runs, nodes, args, final_command, finish_runs=None, show_comparisons=True):
    """What run_stages.sh METHOD and reproduce TARGET share, on the graph of `runs`
    (build(runs, write=not args.status)): --status, --slurm, or the unfinished stages
    trained here; then each run of `finish_runs` (default: every run) that is finished
    gets its summary (its comparison with the paper printed when show_comparisons, else
    only written). --time-limit counts from the call's start (call_started()).
    Returns an exit code: train.STOPPED when a signal or the time limit stopped the run
    (run it again to resume), 1 when a stage failed."""
    if args.status:
        counts = print_status(nodes, time_limit=args.time_limit)
        return 1 if counts.get("failed") else 0
    if args.slurm:
        return slurm.submit(nodes, args, final_command)
    limit = getattr(args, "time_limit", None)
    runner = Runner(nodes, args.jobs, args.gpu, deadline=call_started() + limit if limit else None,
                    keep_dir=args.keep)
    done = runner.run()
    for opts in runs if finish_runs is None else finish_runs:
        if is_done(nodes, opts):
            finish(opts, nodes, show_comparisons)
    if done:
        return 0
    return train.STOPPED if (runner.interrupted or runner.out_of_time) and not runner.failed else 1


def stop_reason(args):
    return f"stopped by --time-limit {options.slurm_time(args.time_limit)}" if args.time_limit else "stopped"


def restore_kept(args, out=sys.stdout):
    """--keep DIR: what DIR has and the output folder lacks, copied in before planning."""
    if args.keep and not args.status:
        for folder, what in keep.restore(args.keep, args.out):
            say(f"from {args.keep}: {folder} ({what})", out)


def main(argv=None):
    """One method's run: its stages in order (or K at a time, or on Slurm), then its summary."""
    argv = sys.argv[1:] if argv is None else argv
    args = options.run_parser().parse_args(argv)
    args.data = str(Path(args.out).resolve() / "data" / args.dataset)
    args.out = str(Path(args.out).resolve())
    restore_kept(args)
    try:
        opts = plan.options_from_args(args)
        code = execute([opts], build([opts], write=not args.status), args,
                       [str(engine.REPO / "run_stages.sh"), *options.without_execution(argv)])
    except plan.PlanError as e:
        print(f"run_stages.sh: error: {e}", file=sys.stderr)
        return 1
    if code == train.STOPPED:
        print(f"run_stages.sh: {stop_reason(args)}; run the same command again to resume from the last snapshots",
              file=sys.stderr)
    elif code and not args.status and not args.slurm:
        print("run_stages.sh: a stage did not finish (see above); run the same command again to resume",
              file=sys.stderr)
    return code


if __name__ == "__main__":
    engine.use_system_python()
    sys.exit(main())
