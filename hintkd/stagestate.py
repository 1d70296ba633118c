"""What a stage folder's files say about the stage: the one place that reads them.

A stage is
  done      summary.json exists (written last, after final.caffemodel);
  running   a process on this machine holds its lock (.train.lock);
  failed    failed.json says why its last attempt ended (removed when it starts again);
  stopped   it has a complete snapshot to resume from;
  waiting   none of these: not started.
Its iterations done are all of them when done; while it runs, the last iteration its
Caffe log reached; else those of its last complete snapshot, where it resumes (the
iterations a stopped stage trained past its snapshot are trained again).
The driver, --status, the dry run, the time estimate and the Slurm jobs all ask here;
hintkd.train writes these files.
"""
import fcntl
import json
import re
from pathlib import Path

SUMMARY = "summary.json"
FAILED = "failed.json"
LOCK = ".train.lock"
SNAPSHOTS = "snapshots"
LOG = "caffe.log"
STATES = ("done", "running", "failed", "stopped", "waiting")


def is_finished(folder):
    return (Path(folder) / SUMMARY).exists()


def is_running(folder):
    """True while a process on this machine holds the stage's lock."""
    path = Path(folder) / LOCK
    if not path.exists():
        return False
    with open(path) as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False  # closing the probe releases it


def failure(folder):
    """What failed.json says about the last attempt, or None."""
    path = Path(folder) / FAILED
    return json.loads(path.read_text()) if path.exists() else None


def complete_snapshots(folder):
    """(iteration, solverstate path) of every snapshot marked complete, oldest first."""
    found = []
    for marker in (Path(folder) / SNAPSHOTS).glob("net_iter_*.complete"):
        it = int(re.search(r"_iter_(\d+)\.complete$", marker.name).group(1))
        state = marker.with_suffix(".solverstate")
        if state.exists() and marker.with_suffix(".caffemodel").exists():
            found.append((it, state))
    return sorted(found)


def last_snapshot(folder):
    """The iteration of the last complete snapshot, 0 when there is none."""
    snapshots = complete_snapshots(folder)
    return snapshots[-1][0] if snapshots else 0


def logged_iteration(folder):
    """The last iteration the stage's Caffe log reached, 0 without a log."""
    log = Path(folder) / LOG
    if not log.exists():
        return 0
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 65536))
        found = re.findall(rb"Iteration (\d+)", f.read())
    return int(found[-1]) if found else 0


def iterations_done(folder, total, running=None):
    """Iterations a stage has trained, of `total`; running: whether a process trains it
    now (default: one on this machine; a Slurm job elsewhere is the caller's to say)."""
    if is_finished(folder):
        return total
    if is_running(folder) if running is None else running:
        return max(min(logged_iteration(folder), total), last_snapshot(folder))
    return last_snapshot(folder)


def state(folder):
    """One of STATES, from the files alone."""
    if is_finished(folder):
        return "done"
    if is_running(folder):
        return "running"
    if failure(folder):
        return "failed"
    return "stopped" if complete_snapshots(folder) else "waiting"
