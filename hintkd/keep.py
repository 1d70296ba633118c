"""Kept results (--keep DIR): a compact copy of each stage, small enough for a git
repository, from which a fresh clone on another machine goes on.

DIR mirrors the output folder (DIR/DATASET/RUN/STAGE as under --out). A stage is kept
  finished  summary.json, its Caffe log (caffe.log.gz), stage.json, train_val.prototxt,
            solver.prototxt, export/ of a student, and final.caffemodel when another
            stage starts from it (a teacher, a Stage 1 step);
  stopped   stage.json, the prototxts, its Caffe log so far (caffe.log.gz) and its
            last whole snapshot (snapshots/net_iter_N.caffemodel, .solverstate,
            .complete), replaced by the finished form once it finishes.
Nothing else: no LMDB, no older snapshots, no console logs. Each stage is written
under a temporary name and renamed whole, so DIR never holds half a stage.

restore() copies what the output folder lacks back into it before the stages are
planned: a stage finished in DIR is finished here, a stopped one resumes from its
snapshot at its iteration. stage.json and the prototxts name the paths of the machine
that trained them; a stage that trains again gets them anew from the planner.
"""
import gzip
import os
import shutil
from pathlib import Path

from hintkd import stagestate
from hintkd.train import FINAL_WEIGHTS

EXPORT = "export"
LOG_KEPT = "caffe.log.gz"
PLAN_FILES = ("stage.json", "train_val.prototxt", "solver.prototxt")
SNAPSHOT_SUFFIXES = (".caffemodel", ".solverstate", ".complete")


def kept_folder(stage_dir, out_dir, keep_dir):
    return Path(keep_dir) / Path(stage_dir).resolve().relative_to(Path(out_dir).resolve())


def kept_stages(keep_dir):
    """Every stage folder under a kept folder (one with a stage.json)."""
    return sorted(p.parent for p in Path(keep_dir).glob("**/stage.json") if not p.parent.name.startswith("."))


def _write_whole(target, fill):
    """Fills a temporary folder beside target, then puts it in target's place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial, old = target.with_name(f".{target.name}.partial"), target.with_name(f".{target.name}.old")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    fill(partial)
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)


def keep_stage(stage_dir, out_dir, keep_dir, weights_needed):
    """Keeps a finished or stopped stage; returns its kept folder, or None when it has
    nothing to keep yet (not started) or its kept form is already this one."""
    stage_dir = Path(stage_dir)
    target = kept_folder(stage_dir, out_dir, keep_dir)
    finished = stagestate.is_finished(stage_dir)
    if finished:
        if (target / stagestate.SUMMARY).exists() and \
                (target / stagestate.SUMMARY).read_bytes() == (stage_dir / stagestate.SUMMARY).read_bytes():
            return None
    else:
        snapshots = stagestate.complete_snapshots(stage_dir)
        if not snapshots or stagestate.last_snapshot(target) == snapshots[-1][0]:
            return None

    def fill(folder):
        for name in PLAN_FILES:
            shutil.copy2(stage_dir / name, folder / name)
        if (stage_dir / stagestate.LOG).exists():
            with open(stage_dir / stagestate.LOG, "rb") as log, gzip.GzipFile(folder / LOG_KEPT, "wb", mtime=0) as kept:
                shutil.copyfileobj(log, kept)
        if not finished:
            _copy_snapshot(snapshots[-1][1], folder)
            return
        if (stage_dir / EXPORT).is_dir():
            shutil.copytree(stage_dir / EXPORT, folder / EXPORT)
        if weights_needed:
            shutil.copy2(stage_dir / FINAL_WEIGHTS, folder / FINAL_WEIGHTS)
        shutil.copy2(stage_dir / stagestate.SUMMARY, folder / stagestate.SUMMARY)  # last: the stage is whole
    _write_whole(target, fill)
    return target


def size(folder):
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def restore(keep_dir, out_dir):
    """Copies into out_dir what a kept folder has and out_dir lacks; returns
    [(stage folder, "finished" or "snapshot at N")] of what it restored."""
    keep_dir, out_dir = Path(keep_dir), Path(out_dir)
    if not keep_dir.is_dir():
        return []
    restored = []
    for kept in kept_stages(keep_dir):
        local = out_dir / kept.relative_to(keep_dir)
        if stagestate.is_finished(local):
            continue
        if (kept / stagestate.SUMMARY).exists():
            _restore_finished(kept, local)
            restored.append((local, "finished"))
        elif stagestate.last_snapshot(kept) > stagestate.last_snapshot(local):
            _restore_snapshot(kept, local)
            restored.append((local, f"snapshot at iteration {stagestate.last_snapshot(kept)}"))
    return restored


def _restore_finished(kept, local):
    local.mkdir(parents=True, exist_ok=True)
    for name in PLAN_FILES + (FINAL_WEIGHTS,):
        if (kept / name).exists():
            shutil.copy2(kept / name, local / name)
    if (kept / EXPORT).is_dir():
        shutil.rmtree(local / EXPORT, ignore_errors=True)
        shutil.copytree(kept / EXPORT, local / EXPORT)
    _restore_log(kept, local)
    shutil.copy2(kept / stagestate.SUMMARY, local / stagestate.SUMMARY)  # last: finished from here on


def _restore_log(kept, local):
    """The kept log as the stage's caffe.log, which a resumed stage appends to."""
    if (kept / LOG_KEPT).exists():
        with gzip.open(kept / LOG_KEPT, "rb") as log, open(local / stagestate.LOG, "wb") as plain:
            shutil.copyfileobj(log, plain)


def _restore_snapshot(kept, local):
    """The kept snapshot into the stage's snapshots/; its .complete marker last."""
    local.mkdir(parents=True, exist_ok=True)
    _restore_log(kept, local)
    _copy_snapshot(stagestate.complete_snapshots(kept)[-1][1], local)


def _copy_snapshot(solverstate, stage_dir):
    """A snapshot's three files into stage_dir's snapshots/, its .complete marker last."""
    (stage_dir / stagestate.SNAPSHOTS).mkdir(parents=True, exist_ok=True)
    for suffix in SNAPSHOT_SUFFIXES:
        source = solverstate.with_suffix(suffix)
        shutil.copy2(source, stage_dir / stagestate.SNAPSHOTS / source.name)
