"""Training on real Caffe: accuracy on real MNIST, summaries, reuse, resume after
a real kill, NaN stops, one driver per output folder."""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import MNIST, REPO, python, run
from hintkd import engine, plan, stagestate, train

RUN_STAGES = str(REPO / "run_stages.sh")


def planned_stage(data_dir, out, dataset="digits", method="student", scale=0.1, **options):
    opts = plan.RunOptions(dataset, 14, 8, method, Path(data_dir), Path(out), scale=scale, **options)
    (stage,) = plan.plan(opts)
    return stage


def train_stage(stage, check=True):
    return python("-m", "hintkd.train", stage, check=check)


def test_resnet8_on_2000_real_mnist_images_reaches_93_percent(mnist_2k, tmp_path):
    stage = planned_stage(mnist_2k, tmp_path, dataset="mnist", scale=0.01)  # 360 iterations of 64
    train_stage(stage)
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["final_test"]["iteration"] == summary["iterations"] == 360
    # 0.955 and 0.950 in two unchanged runs; a fault in the net's wiring gave 0.897. The bar sits
    # between, out of the noise's reach (2 points below the lower run) and within the fault's (3 above it).
    assert summary["final_test"]["accuracy"] >= 0.93, summary["final_test"]
    assert summary["best_test"]["accuracy"] >= summary["final_test"]["accuracy"]


def test_run_stages_trains_summarizes_and_reuses_a_finished_net(digits_data, tmp_path):
    out = tmp_path / "runs"
    args = [RUN_STAGES, "digits", "14", "8", "teacher", "--scale", "0.1", "--out", str(out)]
    (out / "data").mkdir(parents=True)
    os.symlink(digits_data, out / "data" / "digits")
    first = run(args)
    summary_path = out / "digits" / "teacher-resnet14-w16.32.64-scale0.1" / "summary.json"
    assert str(summary_path) in first.stdout
    summary = json.loads(summary_path.read_text())
    assert (summary["dataset"], summary["depth"], summary["widths"]) == ("digits", 14, [16, 32, 64])
    assert summary["iterations"] == 120 and summary["final_test"]["iteration"] == 120
    assert summary["final_test"]["accuracy"] > 0.5
    assert Path(summary["caffemodel"]).exists() and Path(summary["log"]).exists()
    assert "iter 120/120" in first.stdout

    before = summary_path.stat().st_mtime_ns
    second = run(args)
    assert "finished earlier" in second.stdout
    assert summary_path.stat().st_mtime_ns == before


def test_killed_stage_resumes_from_its_last_complete_snapshot(digits_data, tmp_path):
    stage = planned_stage(digits_data, tmp_path, scale=0.5)  # 600 iterations, a snapshot every 50
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([engine.SYSTEM_PYTHON, "-m", "hintkd.train", str(stage)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(stagestate.complete_snapshots(stage)) < 2 and time.time() < deadline:
        time.sleep(0.02)  # the fast engine takes 100 iterations in well under a second
    process.send_signal(signal.SIGKILL)
    process.wait()
    snapshots = stagestate.complete_snapshots(stage)
    assert snapshots and not stagestate.is_finished(stage)
    last_iteration = snapshots[-1][0]
    # A snapshot Caffe did not finish (no marker) is never resumed from.
    (stage / "snapshots" / "net_iter_99999.solverstate").write_bytes(b"\x08")
    (stage / "snapshots" / "net_iter_99999.caffemodel").write_bytes(b"")

    resumed = train_stage(stage)
    assert f"resuming from the snapshot at iteration {last_iteration}" in resumed.stdout
    second_session = (stage / "caffe.log").read_text().split("Initializing solver from parameters")[2]
    first_record = re.search(r"Iteration (\d+)(?: \(.*\))?, loss = ", second_session)
    assert int(first_record.group(1)) == last_iteration  # not 0: the run went on from the snapshot
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["final_test"]["iteration"] == 600


def test_diverging_loss_stops_with_the_stage_and_iteration(digits_data, tmp_path):
    stage = planned_stage(digits_data, tmp_path)
    solver = (stage / "solver.prototxt").read_text().replace("base_lr: 0.1", "base_lr: 1e+30")
    (stage / "solver.prototxt").write_text(solver)
    result = train_stage(stage, check=False)
    assert result.returncode == 1
    assert "stage 'student ResNet-8': the loss became" in result.stderr
    assert " at iteration " in result.stderr
    assert not stagestate.is_finished(stage)


def test_a_second_driver_on_the_same_output_folder_waits_for_the_stage_and_reuses_it(digits_data, tmp_path):
    """Locks belong to stages: a second driver never trains a stage that another is training."""
    out = tmp_path / "runs"
    (out / "data").mkdir(parents=True)
    os.symlink(digits_data, out / "data" / "digits")
    args = [RUN_STAGES, "digits", "14", "8", "student", "--scale", "0.5", "--out", str(out)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stage = out / "digits" / "student-resnet8-w16.32.64-scale0.5"
    deadline = time.time() + 60
    while not stagestate.is_running(stage) and time.time() < deadline:
        time.sleep(0.05)
    assert not stagestate.is_finished(stage)
    second = run(args)
    first_output, _ = first.communicate(timeout=300)
    assert first.returncode == 0
    assert "[student ResNet-8] another process is training this stage; waiting for it" in second.stdout
    assert "[student ResNet-8] finished by another process" in second.stdout
    assert (stage / "caffe.log").read_text().count("Initializing solver from parameters") == 1
    assert "done: test accuracy" in first_output and stagestate.is_finished(stage)


@pytest.mark.parametrize("args,message", [
    (["digits", "14", "8", "nomethod"], "unknown method 'nomethod': use one of teacher, student"),
    (["digits", "13", "8", "student"], "depth 13 is not 6n+2 with n >= 1: use 8, 14, 20"),
    (["digitz", "14", "8", "student"], "unknown dataset 'digitz'"),
    (["digits", "14", "8", "student", "--bogus"], "unrecognized arguments: --bogus"),
    (["mnist", "14", "8", "student", "--source", "/no/such/mnist"], "'/no/such/mnist' does not exist"),
    (["digits", "14", "8", "student", "--gpu", "0,1"], "multi-GPU data parallel is not available"),
    (["digits", "14", "8", "student", "--scale", "0"], "expected a number above 0"),
    (["digits", "14"], "expected DATASET TEACHER STUDENT METHOD first"),
    (["digits", "resnet", "8", "student"], "a net is a depth like 14 or a .prototxt file, got 'resnet'"),
    (["digits", "mine.prototxt", "8", "student"], "no prototxt file 'mine.prototxt'"),
    (["digits", "14", "8", "kd", "--teacher-weights", "/no/t.caffemodel"], "no file '/no/t.caffemodel'"),
    (["digits", "14", "8", "student", "--source", "/"], "digits is bundled with scikit-learn and takes no --source"),
    (["folder", "14", "8", "student"], "folder needs --source PATH"),
    (["digits", "14", "8", "student", "--status", "--jobs", "2"], "--status trains nothing"),
    (["digits", "14", "8", "student", "--partition", "gpu"], "--partition is an option of --slurm"),
    (["digits", "14", "8", "student", "--slurm", "--jobs", "2"], "--jobs is for this machine"),
])
def test_driver_rejects_bad_arguments_before_any_work(tmp_path, args, message):
    """One line naming run_stages.sh, and nothing prepared or written (a fresh --out stays absent)."""
    out = tmp_path / "runs"
    result = run([RUN_STAGES, *args, "--out", str(out)], check=False)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.startswith("run_stages.sh: error: ") and result.stderr.count("\n") == 1
    assert result.stdout == "" and not out.exists()


def test_a_source_other_than_the_prepared_one_is_refused(tmp_path, mnist_2k):
    """A dataset prepared from one source is never silently reused for another."""
    out = tmp_path / "runs"
    (out / "data").mkdir(parents=True)
    os.symlink(mnist_2k, out / "data" / "mnist")
    other = tmp_path / "other-mnist"
    other.mkdir()
    for f in MNIST.iterdir():
        raw = f.read_bytes()
        (other / f.name).write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))  # one byte changed
    result = run([RUN_STAGES, "mnist", "14", "8", "student", "--source", str(other), "--out", str(out)], check=False)
    assert result.returncode != 0
    assert f"was prepared from {MNIST.resolve()}" in result.stderr and f"--source {other}" in result.stderr
    assert not list(out.glob("mnist/student-*"))


@pytest.mark.parametrize("args", [["--help"], ["digits", "14", "8", "kd", "--help"], ["reproduce", "table1", "-h"]])
def test_help_is_printed_whole_and_nothing_runs(tmp_path, args):
    result = run([RUN_STAGES, *args, "--out", str(tmp_path / "runs")], check=False)
    assert result.returncode == 0 and "--jobs" in result.stdout + result.stderr
    assert "command not found" not in result.stderr and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("signum,to_group,jobs", [(signal.SIGINT, True, 1), (signal.SIGINT, True, 2),
                                                  (signal.SIGTERM, False, 1), (signal.SIGTERM, False, 2)])
def test_a_stopped_driver_exits_75_and_resumes(digits_data, tmp_path, signum, to_group, jobs):
    """Ctrl-C (SIGINT to the whole process group) or `kill` (SIGTERM to the driver alone),
    one stage at a time or under --jobs: the stage stops after a snapshot and the driver
    exits 75 (EX_TEMPFAIL: run again), never 0; the same command then resumes and finishes."""
    (tmp_path / "data").mkdir()
    os.symlink(digits_data, tmp_path / "data" / "digits")
    args = [RUN_STAGES, "digits", "14", "8", "student", "--scale", "0.5", "--jobs", str(jobs), "--out", str(tmp_path)]
    stage = tmp_path / "digits" / "student-resnet8-w16.32.64-scale0.5"  # 600 iterations, a snapshot every 50
    # As from a terminal: SIGINT at its default even where the test runs in the background of a
    # shell, whose children inherit it ignored (Python then raises no KeyboardInterrupt).
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (stage.exists() and stagestate.complete_snapshots(stage)) and time.time() < deadline:
        time.sleep(0.02)
    (os.killpg if to_group else os.kill)(driver.pid, signum)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == train.STOPPED, stdout + stderr
    assert "stopped; run the same command again to resume" in stderr
    assert not stagestate.is_finished(stage) and stagestate.complete_snapshots(stage)
    console = stdout + ((stage / "progress.log").read_text() if jobs > 1 else "")
    assert "after a snapshot" in console
    resumed = run(args)
    last = (stage / "progress.log").read_text() if jobs > 1 else resumed.stdout
    assert "resuming from the snapshot at iteration" in last
    assert json.loads((stage / "summary.json").read_text())["final_test"]["iteration"] == 600
