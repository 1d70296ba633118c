"""Trains one stage folder (written by generate.py) with pycaffe.

    python3 -m hintkd.train STAGE_DIR [--gpu N]

A stage folder holds stage.json, train_val.prototxt and solver.prototxt. Caffe's
own log goes to STAGE_DIR/caffe.log; progress goes to the terminal. Snapshots
are taken here, each marked complete only after Caffe has written it, so an
interrupted run resumes from its last whole snapshot. summary.json is written
last: a stage with a summary is finished, and is skipped when run again.
SIGTERM, SIGUSR1 (Slurm's warning ahead of a time limit) and SIGINT stop it
after the current iteration with a snapshot and exit code 75 (STOPPED), never 0:
a stopped stage is not finished. So does --stop-at T (a Unix time: the driver's
--time-limit), early enough that the next step and the snapshot end before T. A
stage that fails writes failed.json.
"""
import argparse
import fcntl
import json
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path

from hintkd import caffelog, engine, export, handoff, netgen, stagestate
from hintkd.atomic import write_json
from hintkd.stagestate import FAILED, LOCK, SUMMARY, complete_snapshots, failure, is_finished

SNAPSHOT_PREFIX = "snapshots/net"
FINAL_WEIGHTS = "final.caffemodel"
KEEP_SNAPSHOTS = 2
LOADED = "loaded.json"  # the weights a stage started from: each file's path, sha256 and layers
STOPPED = 75  # exit code of a stage stopped by a signal (EX_TEMPFAIL: run it again to resume)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# A stage starts under a time limit only when this much training fits before it, after
# its start-up and with its snapshot's time kept aside: a shorter piece would spend
# about as long on its start-up (the process, Caffe, the nets, the weights) and its
# snapshot as on training.
MIN_PIECE_SECONDS = 10


class TrainingError(Exception):
    """A stage that cannot go on; the message names the stage and the reason."""


class Stopped(Exception):
    """A signal stopped the stage after a snapshot; it resumes from there."""


def read_stage(stage_dir):
    return json.loads((Path(stage_dir) / "stage.json").read_text())


def mark_failed(stage_dir, reason, exit_code=1):
    write_json(Path(stage_dir) / FAILED, {"reason": reason, "exit": exit_code, "host": socket.gethostname(),
                                           "job": os.environ.get("SLURM_JOB_ID"), "time": time.time(),
                                           "log": str(Path(stage_dir).resolve() / "caffe.log")})


def record_exit(stage_dir, code):
    """What a stage process's exit code means: done, stopped or failed; a failure the
    process could not describe itself (a crash, a kill) is written to failed.json here."""
    if code == 0 and is_finished(stage_dir):
        return "done"
    if code == STOPPED:
        return "stopped"
    if not failure(stage_dir):
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        mark_failed(stage_dir, f"the training process {how}", code)
    return "failed"


def take_snapshot(solver, stage_dir):
    solver.snapshot()
    it = solver.iter
    marker = Path(stage_dir) / stagestate.SNAPSHOTS / f"net_iter_{it}.complete"
    marker.write_text(f"{it}\n")
    for _, state in complete_snapshots(stage_dir)[:-KEEP_SNAPSHOTS]:
        for suffix in (".complete", ".caffemodel", ".solverstate"):
            state.with_suffix(suffix).unlink(missing_ok=True)


def redirect_caffe_log(log_path):
    """Sends fd 2 (where glog writes) to the log; returns a stream to the terminal."""
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    sys.stderr = terminal
    return terminal


class TimeLimit:
    """When a stage stops before a deadline (Unix seconds, or None): after a step, when
    the longest step seen so far (a test pass included, once one ran) and a snapshot would
    not both end before it. The snapshot's time is measured, not guessed: first by
    writing the net's weights once (a snapshot writes them and the solver's state, which
    is as large again), then by each snapshot taken."""

    def __init__(self, deadline):
        self.deadline = deadline
        self.longest_step = self.snapshot_seconds = 0.0

    def measure_snapshot(self, net, stage_dir):
        if self.deadline is None:
            return
        probe = Path(stage_dir) / ".snapshot-timing.caffemodel"
        started = time.perf_counter()
        net.save(str(probe))
        self.snapshot_seconds = 2 * (time.perf_counter() - started)
        probe.unlink()

    def timed(self, what, action, *args):
        started = time.perf_counter()
        action(*args)
        seconds = time.perf_counter() - started
        if what == "step":
            self.longest_step = max(self.longest_step, seconds)
        else:
            self.snapshot_seconds = seconds

    def left(self):
        return self.deadline - time.time()

    def too_close(self):
        return self.deadline is not None and self.left() <= self.longest_step + self.snapshot_seconds

    def too_close_to_start(self):
        return self.deadline is not None and self.left() < MIN_PIECE_SECONDS + self.snapshot_seconds


class Progress:
    """One status line: where the stage is, its loss, lr, last test, time left."""

    def __init__(self, label, max_iter, stream=sys.stdout, seconds_between_lines=10):
        self.label, self.max_iter, self.stream = label, max_iter, stream
        self.tty = stream.isatty()
        self.started, self.start_iter = time.time(), None
        self.last_test = ""
        self.seconds_between_lines, self.last_line = seconds_between_lines, 0.0

    def update(self, it, losses, lr, force=False):
        """Rewrites the line on a terminal; elsewhere writes one every few seconds."""
        if self.start_iter is None:
            self.start_iter = it - 1
        if not (force or self.tty or time.time() - self.last_line >= self.seconds_between_lines):
            return
        self.last_line = time.time()
        done = it - self.start_iter
        per_iter = (time.time() - self.started) / max(done, 1)
        left = per_iter * (self.max_iter - it)
        terms = {k: v for k, v in losses.items() if k != "total_loss"}
        parts = f" ({', '.join(f'{k} {v:.4g}' for k, v in terms.items())})" if len(terms) > 1 else ""
        line = (f"[{self.label}] iter {it}/{self.max_iter}  total loss {losses['total_loss']:.4f}{parts}  lr {lr:g}"
                f"{self.last_test}  {per_iter:.3f} s/iter  left {_hms(left)}")
        self.stream.write(("\r" + line.ljust(120)) if self.tty else line + "\n")
        self.stream.flush()

    def test(self, record):
        outputs = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("iteration", "seconds"))
        self.last_test = f"  test@{record['iteration']}: {outputs}"

    def close(self):
        if self.tty:
            self.stream.write("\n")


def _hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def learning_rate(solver_param, it):
    if solver_param.lr_policy == "multistep":
        return solver_param.base_lr * solver_param.gamma ** sum(1 for s in solver_param.stepvalue if it >= s)
    return solver_param.base_lr


def loss_weights(net):
    """{loss output: its loss_weight} of a net."""
    weights = dict(zip(net._blob_names, net._blob_loss_weights))
    return {name: weights[name] for name in net.outputs if weights[name]}


def losses(net):
    """The net's losses at its last forward pass: each term by its blob's name
    (cross_entropy, kd, hint1, ...; unweighted, as Caffe prints them) and
    total_loss, the weighted sum that SGD minimizes."""
    terms = {name: float(net.blobs[name].data.sum()) for name in loss_weights(net)}
    return {"total_loss": sum(w * terms[name] for name, w in loss_weights(net).items()), **terms}


def train(stage_dir, gpu=None, out=sys.stdout, stop_at=None):
    stage_dir = Path(stage_dir).resolve()
    stage = read_stage(stage_dir)
    label = stage["label"]
    if is_finished(stage_dir):
        print(f"[{label}] finished earlier: {stage_dir / SUMMARY}", file=out)
        return json.loads((stage_dir / SUMMARY).read_text())
    stop = []  # a stop signal is acted on between iterations (Caffe's step is never cut in two)
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda number, frame: stop.append(signal.Signals(number).name))
    # One process per stage: another driver or job that reaches this stage waits, then reuses it.
    lock = open(stage_dir / LOCK, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"[{label}] another process is training this stage; waiting for it", file=out, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    if is_finished(stage_dir):
        print(f"[{label}] finished by another process: {stage_dir / SUMMARY}", file=out)
        return json.loads((stage_dir / SUMMARY).read_text())
    (stage_dir / FAILED).unlink(missing_ok=True)
    caffe = engine.import_caffe(quiet=False)
    if gpu is not None:
        engine.check_gpu(gpu)
    engine_line = engine.describe(gpu)
    print(f"[{label}] engine: {engine_line}", file=out, flush=True)
    solver_param = netgen.validate((stage_dir / "solver.prototxt").read_text(), "SolverParameter")

    os.chdir(stage_dir)  # the solver's net and snapshot paths are relative to the stage
    (stage_dir / "snapshots").mkdir(exist_ok=True)
    log_path = stage_dir / "caffe.log"
    terminal = redirect_caffe_log(log_path)
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        caffe.set_device(gpu)
        caffe.set_mode_gpu()
    if stage["stage"] == "import":
        return measure_given(stage_dir, stage, caffe, solver_param, engine_line, out)
    solver = caffe.get_solver("solver.prototxt")

    snapshots = complete_snapshots(stage_dir)
    if snapshots:
        it, state = snapshots[-1]
        print(f"[{label}] resuming from the snapshot at iteration {it}", file=out, flush=True)
        solver.restore(str(state.relative_to(stage_dir)))
    else:
        # What this stage really started from, kept for its summary (a resumed run loads a snapshot instead).
        loaded = handoff.load_initial_weights(solver.net, stage.get("init", []))
        write_json(stage_dir / LOADED, loaded)
        for record in loaded:
            print(f"[{label}] {handoff.describe_loaded(record)}", file=out, flush=True)

    max_iter, every = solver_param.max_iter, stage["snapshot_every"]
    limit = TimeLimit(stop_at)
    limit.measure_snapshot(solver.net, stage_dir)
    if limit.too_close_to_start():
        raise Stopped(f"[{label}] not started: {limit.left():.0f} s left before the time limit, less than "
                      f"{MIN_PIECE_SECONDS} s of training and a snapshot; it starts when run again")
    progress = Progress(label, max_iter, out)
    log_reader = _LogFollower(log_path)
    started, start_iter = time.time(), solver.iter

    def after_step():
        now = losses(solver.net)
        if not math.isfinite(now["total_loss"]):
            progress.close()
            advice = (f"; a hint stage that diverges needs a lower --hint-lr (it had {solver_param.base_lr:g})"
                      if stage.get("hints") else "")
            raise TrainingError(f"stage '{label}': the loss became {now['total_loss']} at iteration {solver.iter} "
                                f"(log: {log_path}){advice}")
        for record in log_reader.new_tests():
            progress.test(record)
        progress.update(solver.iter, now, learning_rate(solver_param, solver.iter - 1),
                        force=solver.iter == max_iter)
        return now

    if stop:  # told to stop while starting: nothing new to keep
        raise Stopped(f"[{label}] stopped by {stop[0]} before its first iteration; it resumes when run again")
    while solver.iter < max_iter - 1:
        limit.timed("step", solver.step, 1)
        after_step()
        if not stop and limit.too_close():
            stop.append("the time limit")
        if solver.iter % every == 0 or stop:
            limit.timed("snapshot", take_snapshot, solver, stage_dir)
        if stop:
            progress.close()
            before = (f", {limit.left():.1f} s before the limit (kept for the longest step, {limit.longest_step:.2f} s, "
                      f"and a snapshot, {limit.snapshot_seconds:.2f} s)" if stop[0] == "the time limit" else "")
            raise Stopped(f"[{label}] stopped by {stop[0]} at iteration {solver.iter}, after a snapshot{before}; "
                          "it resumes from there when run again")
    # Caffe's own Solve() runs the last iteration and the final test pass.
    solver.solve()
    final_losses = {"iteration": solver.iter, **after_step()}
    progress.close()

    handoff.verify_frozen(solver.net, stage.get("init", []))
    tmp = stage_dir / f".{FINAL_WEIGHTS}.tmp"
    solver.net.save(str(tmp))
    os.replace(tmp, stage_dir / FINAL_WEIGHTS)
    if stage["trains"] == "student" and stage["stage"] in ("alone", "stage2"):
        folder = export.export_student(stage_dir, stage_dir / FINAL_WEIGHTS)
        print(f"[{label}] the student for Caffe alone: {folder}", file=out, flush=True)
    threads = engine.thread_record(log_path, gpu)
    print(f"[{label}] {engine.describe_threads(threads)}", file=out, flush=True)
    summary = summarize(stage_dir, stage, max_iter, started, solver.iter - start_iter,
                        final_losses, loss_weights(solver.net), engine_line, threads)
    if stage.get("tests", True) and (summary["final_test"] or {}).get("iteration") != max_iter:
        raise TrainingError(f"stage '{label}': {log_path} holds no test result for iteration {max_iter}")
    write_json(stage_dir / SUMMARY, summary)
    terminal.flush()
    return summary


def summarize(stage_dir, stage, max_iter, started, iterations_this_run, final_losses, weights, engine_line,
              threads=None):
    finished = time.time()
    seconds = finished - started
    parsed = caffelog.parse_file(stage_dir / "caffe.log")
    tests = parsed.test_records()
    final, best = caffelog.final_and_best(tests)
    return {
        **{k: stage[k] for k in ("label", "dataset", "method", "stage", "net", "nets", "trains", "seed", "scale",
                                 "hints", "kd") if k in stage},
        **trained_net(stage),
        "iterations": max_iter,
        "final_test": final,
        "best_test": best,
        # At the last iteration, read from the net (Caffe's log holds the terms only
        # every `display` iterations): total_loss and each term, unweighted.
        "final_losses": final_losses,
        "loss_weights": weights,
        "test_points": len(tests),
        "loaded": json.loads((stage_dir / LOADED).read_text()) if (stage_dir / LOADED).exists() else [],
        "engine": engine_line,
        # The thread count that decided the sums, and whether it held (hintkd.engine.thread_record).
        "threads": threads,
        # This run's wall-clock start and end (the last run of a resumed stage), Unix seconds.
        "started": round(started, 3),
        "finished": round(finished, 3),
        "seconds_this_run": round(seconds, 1),
        "seconds_per_iter": round(seconds / max(iterations_this_run, 1), 4),
        "log": str(stage_dir / "caffe.log"),
        "caffemodel": str(stage_dir / FINAL_WEIGHTS),
    }


def trained_net(stage):
    """What names the net a stage trains: a ResNet's depth and widths, or a user's prototxt."""
    return {k: v for k, v in stage["nets"][stage["trains"]].items() if k in ("depth", "widths", "prototxt")}


def measure_given(stage_dir, stage, caffe, solver_param, engine_line, out):
    """A teacher given with its weights: renamed into the stage net's names, loaded and
    checked layer by layer, and its accuracy measured once over the test set."""
    started = time.time()
    final = stage_dir / FINAL_WEIGHTS
    handoff.write_renamed(stage["weights"], final, stage["rename"])
    net = caffe.Net("train_val.prototxt", caffe.TEST)
    handoff.load_initial_weights(net, [{"weights": str(final), "layers": list(stage["rename"])}])
    batches = solver_param.test_iter[0]
    totals = {}
    for _ in range(batches):
        outputs = net.forward()
        for name, value in outputs.items():
            totals[name] = totals.get(name, 0.0) + float(value.sum())
    test = {"iteration": 0, **{name: total / batches for name, total in totals.items()}}
    print(f"[{stage['label']}] loaded and checked {len(stage['rename'])} layers from {stage['weights']}; test "
          + ", ".join(f"{k} {v:.4f}" for k, v in test.items() if k != "iteration"), file=out, flush=True)
    finished = time.time()
    summary = {**{k: stage[k] for k in ("label", "dataset", "method", "stage", "trains", "seed", "scale")},
               **trained_net(stage), "weights": stage["weights"], "iterations": 0, "final_test": test, "best_test": test,
               "final_losses": None, "loss_weights": None, "test_points": 1, "engine": engine_line,
               "started": round(started, 3), "finished": round(finished, 3),
               "seconds_this_run": round(finished - started, 1), "seconds_per_iter": None,
               "log": str(stage_dir / "caffe.log"), "caffemodel": str(final)}
    write_json(stage_dir / SUMMARY, summary)
    return summary


class _LogFollower:
    """Reads test results from the Caffe log as Caffe writes them."""

    def __init__(self, path):
        self.path, self.offset, self.parser = path, os.path.getsize(path), caffelog.LogParser()
        self.seen = set()
        self.pending = ""

    def new_tests(self):
        with open(self.path, errors="replace") as f:
            f.seek(self.offset)
            text = f.read()
            self.offset = f.tell()
        text, self.pending = self.pending + text, ""
        if text and not text.endswith("\n"):
            text, _, self.pending = text.rpartition("\n")
        self.parser.feed_text(text)
        fresh = [r for r in self.parser.test_records() if r["iteration"] not in self.seen]
        self.seen.update(r["iteration"] for r in fresh)
        return fresh


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage_dir")
    parser.add_argument("--gpu", type=int, help="GPU id (default: CPU)")
    parser.add_argument("--stop-at", type=float, metavar="UNIX_TIME",
                        help="stop with a snapshot early enough to end before this time (the driver's --time-limit)")
    args = parser.parse_args(argv)
    stage_dir = Path(args.stage_dir).resolve()
    try:
        summary = train(stage_dir, args.gpu, stop_at=args.stop_at)
    except Stopped as e:
        print(e, flush=True)
        return STOPPED
    except (TrainingError, handoff.HandoffError, engine.EngineError) as e:
        print(f"error: {e}", file=sys.stderr)
        mark_failed(stage_dir, str(e))
        return 1
    final = summary["final_test"] or summary["final_losses"] or {}
    results = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if k not in ("iteration", "seconds"))
    print(f"[{summary['label']}] done: {'test' if summary['final_test'] else 'training'} {results} "
          f"at iteration {final.get('iteration')}; summary {stage_dir / SUMMARY}")
    return 0


if __name__ == "__main__":
    engine.use_system_python()
    sys.exit(main())
