"""--time-limit on real Caffe: a stage stops with a snapshot before its deadline, a run
stops cleanly (exit 75) with what finished kept, and the same command then trains only
what is left."""
import re
import time

import pytest

from conftest import REPO, python, run
from hintkd import estimate, stagestate, train
from test_training import planned_stage

RUN_STAGES = str(REPO / "run_stages.sh")


def test_a_stage_stops_before_its_deadline_with_a_snapshot_and_resumes_from_it(digits_data, tmp_path):
    stage = planned_stage(digits_data, tmp_path, scale=4)  # about 40 s of training: more than the limit
    deadline = time.time() + 12
    result = python("-m", "hintkd.train", stage, "--stop-at", f"{deadline:.3f}", check=False)
    ended = time.time()
    assert result.returncode == train.STOPPED, result.stdout + result.stderr
    assert ended <= deadline + 1.0, f"ended {ended - deadline:.2f} s after the deadline"  # the process's exit included
    stopped = re.search(r"stopped by the time limit at iteration (\d+), after a snapshot, ([\d.]+) s before the limit",
                        result.stdout)
    assert stopped, result.stdout
    iteration = int(stopped[1])
    assert stagestate.last_snapshot(stage) == iteration > 0 and not stagestate.is_finished(stage)
    assert stagestate.state(stage) == "stopped"
    finished = python("-m", "hintkd.train", stage)
    assert f"resuming from the snapshot at iteration {iteration}" in finished.stdout
    assert stagestate.is_finished(stage)


def test_a_stage_too_close_to_its_deadline_does_not_start(digits_data, tmp_path):
    stage = planned_stage(digits_data, tmp_path, scale=0.05)
    result = python("-m", "hintkd.train", stage, "--stop-at", f"{time.time() + 3:.3f}", check=False)
    assert result.returncode == train.STOPPED and "not started" in result.stdout, result.stdout
    assert stagestate.state(stage) == "waiting" and stagestate.iterations_done(stage, 60) == 0


def test_a_run_stopped_by_its_time_limit_is_finished_by_the_same_command_training_nothing_twice(digits_data,
                                                                                             tmp_path):
    out = tmp_path / "runs"
    command = [RUN_STAGES, "digits", "14", "8", "kd", "--nets", "2", "--out", str(out)]
    started = time.time()
    first = run([*command, "--time-limit", "25s"], check=False)
    took = time.time() - started
    assert first.returncode == train.STOPPED, first.stdout + first.stderr
    assert "run_stages.sh: stopped by --time-limit 0:00:25; run the same command again" in first.stderr
    assert took < 25 + 3, took  # the driver's own exit after the last stage stopped
    stages = sorted(p.parent for p in out.glob("digits/**/stage.json"))
    finished = {s: (s / "summary.json").stat().st_mtime_ns for s in stages if stagestate.is_finished(s)}
    assert finished and len(finished) < len(stages), stages
    stopped = {s: stagestate.last_snapshot(s) for s in stages if stagestate.state(s) == "stopped"}

    second = run(command)
    for stage, mtime in finished.items():
        assert (stage / "summary.json").stat().st_mtime_ns == mtime, stage  # not trained again
        assert (stage / "caffe.log").read_text().count("Initializing solver from parameters") == 1, stage
    for stage, at in stopped.items():
        assert f"resuming from the snapshot at iteration {at}" in second.stdout, stage
    assert all(stagestate.is_finished(s) for s in stages)


def test_status_says_what_finishes_within_a_limit(digits_data, tmp_path):
    out = tmp_path / "runs"
    kd = [RUN_STAGES, "digits", "14", "8", "kd", "--out", str(out)]
    run([*kd, "--nets", "1"])  # Net 1's speed is Net 2's estimate
    status = run([*kd, "--nets", "2", "--status", "--time-limit", "2h"])
    assert "within 2:00:00: every stage finishes" in status.stdout, status.stdout
    status = run([*kd, "--nets", "2", "--status", "--time-limit", "5s"])  # less than a piece: Net 2 waits
    assert "within 0:00:05: 0 more stage(s) finish; kd stage2 net 2 starts in the next piece" in status.stdout


def test_what_a_limit_finishes_one_stage_at_a_time():
    stages = [("teacher", 100, 100, 0.0), ("step 1", 0, 1000, 600.0), ("step 2", 250, 1000, 1200.0),
              ("net 1", 0, 4000, None)]
    assert estimate.within(3600, stages[:3]) == "within 1:00:00: every stage finishes (about 0:30:00)"
    assert estimate.within(1500, stages) == ("within 0:25:00: 1 more stage(s) finish (step 1), then step 2 stops "
                                             "at about iteration 812 of 1000, after a snapshot")  # 250 + 750 * 0.75
    assert estimate.within(605, stages) == "within 0:10:05: 1 more stage(s) finish (step 1); step 2 starts in the next piece"
    assert estimate.within(7200, stages).endswith("then net 1 has no speed measured yet (--dry-run times each net)")


@pytest.mark.parametrize("args,message", [
    (["--time-limit", "90"], "--time-limit: expected a duration like 15s, 90m or 2h30m, got '90'"),
    (["--time-limit", "0s"], "--time-limit: expected a duration like 15s, 90m or 2h30m, got '0s'"),
    (["--time-limit", "1h", "--slurm", "--time", "1:00:00"], "--time-limit sets each job's --time under --slurm"),
])
def test_a_wrong_time_limit_is_refused_in_one_line(tmp_path, args, message):
    result = run([RUN_STAGES, "digits", "14", "8", "kd", "--out", str(tmp_path / "runs"), *args], check=False)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "runs").exists()


def test_slurm_time_is_the_limit():
    from hintkd import options
    assert [options.duration(t) for t in ("15s", "90m", "2h30m", "1h5m10s")] == [15, 5400, 9000, 3910]
    assert options.slurm_time(9000) == "2:30:00" and options.slurm_time(59) == "0:00:59"

