"""--keep DIR on real Caffe: each stage kept compactly as it finishes or stops, and a
run elsewhere (another output folder, the kept folder copied as a clone would have it)
trains only what the kept folder lacks, resuming a stopped stage at its iteration."""
import gzip
import json
import os
import shutil
import signal
import subprocess
import time

from conftest import REPO, run
from hintkd import keep, stagestate, train

RUN_STAGES = str(REPO / "run_stages.sh")
# Every file a kept stage may hold (hintkd/keep.py); final.caffemodel only where another
# stage starts from it, a snapshot only while the stage is stopped.
PLAN = {"stage.json", "train_val.prototxt", "solver.prototxt"}
FINISHED = PLAN | {"summary.json", "caffe.log.gz"}
EXPORT = {"export/deploy.prototxt", "export/student.caffemodel", "export/preprocessing.json"}


def kept_files(folder):
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def stop_at_a_snapshot(args, stage):
    """Starts the driver, stops it (SIGTERM) once `stage` has a snapshot; returns its output."""
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.time() + 300
    while not (stage.exists() and stagestate.complete_snapshots(stage)) and time.time() < deadline:
        time.sleep(0.02)
    driver.send_signal(signal.SIGTERM)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == train.STOPPED, stdout + stderr
    return stdout


def test_a_kept_folder_goes_on_elsewhere_training_only_what_it_lacks(tmp_path):
    kept, here = tmp_path / "kept", tmp_path / "here"
    command = [RUN_STAGES, "digits", "14", "8", "kd", "--scale", "0.5", "--nets", "2"]
    run_dir = "digits/kd-resnet14to8-scale0.5"  # 600 iterations a stage, a snapshot every 50
    teacher, net1, net2 = ("digits/teacher-resnet14-w16.32.64-scale0.5", f"{run_dir}/stage2-net1",
                           f"{run_dir}/stage2-net2")
    run([*command, "--nets", "1", "--out", str(here), "--keep", str(kept)])
    stop_at_a_snapshot([*command, "--out", str(here), "--keep", str(kept)], here / net2)

    # What the kept folder holds: the compact form, nothing else.
    assert kept_files(kept / teacher) == FINISHED | {"final.caffemodel"}  # the nets start from it
    assert kept_files(kept / net1) == FINISHED | EXPORT
    at = stagestate.last_snapshot(here / net2)
    assert kept_files(kept / net2) == PLAN | {"caffe.log.gz"} | {f"snapshots/net_iter_{at}{s}"
                                                                for s in keep.SNAPSHOT_SUFFIXES}
    assert {p.name for p in kept.iterdir()} == {"digits"}  # no data, no LMDB
    with gzip.open(kept / net1 / "caffe.log.gz", "rt") as log:
        assert log.read() == (here / net1 / "caffe.log").read_text()
    assert keep.size(kept / teacher) + keep.size(kept / net1) < 1.5e6  # 1.1 MB measured: the files above

    # Elsewhere: the kept folder as a clone has it, another output folder, data made anew.
    clone, there = tmp_path / "clone-kept", tmp_path / "there"
    shutil.copytree(kept, clone)
    finished = run([*command, "--out", str(there), "--keep", str(clone)])
    for stage in (teacher, net1):
        assert f"from {clone}: {there / stage} (finished)" in finished.stdout
        assert (there / stage / "summary.json").read_bytes() == (kept / stage / "summary.json").read_bytes()
        assert (there / stage / "caffe.log").read_text().count("Initializing solver from parameters") == 1
    assert f"from {clone}: {there / net2} (snapshot at iteration {at})" in finished.stdout
    assert f"resuming from the snapshot at iteration {at}" in finished.stdout
    log = (there / net2 / "caffe.log").read_text()  # the part trained here, then the part trained there
    assert log.count("Initializing solver from parameters") == 2 and f"Iteration {at}" in log
    assert json.loads((there / net2 / "summary.json").read_text())["final_test"]["iteration"] == 600
    assert kept_files(clone / net2) == FINISHED | EXPORT  # the snapshot gone once it finished
    assert not list(tmp_path.glob("**/.*.partial")) and not list(tmp_path.glob("**/.*.old"))


def test_report_only_and_the_dry_run_see_a_kept_folder_alone(tmp_path):
    kept = tmp_path / "kept"
    target = ["reproduce", "table1", "--dataset", "digits", "--depths", "14,8", "--quick", "--nets", "1"]
    built = run([RUN_STAGES, *target, "--out", str(tmp_path / "here"), "--keep", str(kept)])
    table = (kept / "table.md").read_text()
    assert table in built.stdout and (kept / "table.csv").exists() and (kept / "figure.png").exists()
    written = {name: (kept / name).read_bytes() for name in ("table.md", "table.csv", "figure.png", "figure.pdf")}
    dry = run([RUN_STAGES, *target, "--dry-run", "--out", str(tmp_path / "dry"), "--keep", str(kept)])
    assert "iterations still to go: 0 " in dry.stdout and " to do " not in dry.stdout, dry.stdout  # counted as kept
    assert not (tmp_path / "dry").exists()
    again = run([RUN_STAGES, *target, "--report-only", "--out", str(tmp_path / "elsewhere"), "--keep", str(kept)])
    assert table in again.stdout
    for name, before in written.items():  # the same files, byte for byte (a PDF carries no date)
        assert (kept / name).read_bytes() == before, name
    assert not (tmp_path / "elsewhere" / "data").exists()  # nothing trained, no data prepared


def test_a_keep_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    result = run([RUN_STAGES, "digits", "14", "8", "kd", "--out", str(tmp_path / "runs"), "--keep",
                  str(tmp_path / "notes.txt")], check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"--keep: '{tmp_path / 'notes.txt'}' is a file: give a folder (made if missing)" in result.stderr
    assert not (tmp_path / "runs").exists()
