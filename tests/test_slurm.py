"""--slurm against a real one-node Slurm (tests/helpers/slurm_cluster.py): the grid as
jobs whose dependencies mirror the graph, no duplicates, a stopped job requeued and
resumed from its snapshot, a failed stage cancelling its dependents."""
import json
import re
import sys
import time

import pytest

from conftest import REPO, SCALE, out_with_data, run
from hintkd import graph, report, slurm, stagestate, train

sys.path.insert(0, str(REPO / "tests" / "helpers"))
from slurm_cluster import SlurmCluster  # noqa: E402

RUN_STAGES = str(REPO / "run_stages.sh")
TABLE3 = ["reproduce", "table3", "--dataset", "digits", "--depths", "14,8", "--quick"]
ONE_CPU = ["--slurm", "--cpus-per-task", "1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def submit(cluster, args, out):
    return run([RUN_STAGES, *args, *ONE_CPU, "--out", str(out)], env={"SLURM_CONF": str(cluster.conf)})


def job_of(folder):
    return json.loads((folder / slurm.JOB_FILE).read_text())["job"]


def wait_for(condition, timeout, what):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.2)


def test_the_grid_as_jobs_ends_with_the_table_and_a_second_submission_adds_none(cluster, tmp_path, digits_data):
    out = out_with_data(tmp_path, digits_data)
    prefix = tmp_path / "prefix.sh"  # stands for 'apptainer exec ...': notes each command, then runs it
    prefix.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "prefixed.txt"}\nexec "$@"\n')
    prefix.chmod(0o755)
    first = submit(cluster, [*TABLE3, "--array-throttle", "2", "--job-prefix", str(prefix)], out)
    assert "[slurm] 19 stages submitted, 0 already in the queue; the summaries and the table: job" in first.stdout
    known = set(cluster.states())
    again = submit(cluster, TABLE3, out)
    assert " stages submitted" in again.stdout and "[slurm] 0 stages submitted" in again.stdout
    assert "the final job is already queued" in again.stdout
    assert set(cluster.states()) == known  # no job added
    seconds = cluster.wait_until_idle(timeout=900)
    print(f"the digits grid on Slurm: {seconds:.0f} s")
    study = report.Study("table3", out, "digits", (14, 8), 0.01)
    nodes = graph.build([study.run_options(m) for m in study.methods()])
    states = cluster.states()
    for folder, node in nodes.items():
        assert stagestate.is_finished(folder), folder
        assert states[job_of(folder)] == "COMPLETED"
        log = (folder / "caffe.log").read_text()
        assert log.count("Initializing solver from parameters") == 1, folder  # trained once
    teacher = out / "digits" / "teacher-resnet14-w16.32.64-scale0.01"
    kd_net1 = out / "digits" / "kd-resnet14to8-scale0.01" / "stage2-net1"
    assert f"[slurm] kd stage2 net 1: job {job_of(kd_net1)}, after {job_of(teacher)}\n" in first.stdout
    table = out / "reports" / "table3-digits-resnet14to8-scale0.01" / "table.md"
    assert table.exists() and "| Proposed" in table.read_text()
    status = run([RUN_STAGES, *TABLE3, "--status", "--out", str(out)], env={"SLURM_CONF": str(cluster.conf)})
    assert "19 stages: 19 done" in status.stdout
    prefixed = (tmp_path / "prefixed.txt").read_text().splitlines()
    assert sum("-m hintkd.slurm job" in line for line in prefixed) == 19
    assert sum(line.startswith("engine/install_caffe.sh") for line in prefixed) == 19
    assert f"{RUN_STAGES} reproduce {' '.join(TABLE3[1:])} --out {out}" in prefixed  # the final job, no --slurm


def test_a_stopped_job_is_requeued_and_resumes_from_its_snapshot(cluster, tmp_path, digits_data):
    """Three ways a job is told to stop: a signal alone, after which the job requeues itself
    (USR1 as --signal=B:USR1@300 sends it ahead of the time limit; TERM from scancel -b);
    and Slurm's own requeue, as in a preemption."""
    out = out_with_data(tmp_path, digits_data)
    submitted = submit(cluster, ["digits", "14", "8", "teacher", "--scale", "3"], out)  # 3,600 iterations
    final = submitted.stdout.split("the summaries and the table: job ")[1].split()[0]
    teacher = out / "digits" / "teacher-resnet14-w16.32.64-scale3"
    env = {"SLURM_CONF": str(cluster.conf)}
    job = job_of(teacher)
    stopped_at = 0
    stops = [(["scancel", "-b", "--signal=USR1", job], "SIGUSR1"), (["scancel", "-b", "--signal=TERM", job], "SIGTERM"),
             (["scontrol", "requeue", job], "SIGTERM")]
    for starts, (stop, signal_name) in enumerate(stops, start=1):
        wait_for(lambda: stagestate.last_snapshot(teacher) > stopped_at and stagestate.is_running(teacher), 300,
                 "a snapshot of this start")
        before = stagestate.last_snapshot(teacher)
        run(stop, env=env)
        wait_for(lambda: not stagestate.is_running(teacher), 120, "the job to stop")
        assert not stagestate.is_finished(teacher)
        wait_for(lambda: cluster.states()[job] in ("PENDING", "RUNNING"), 30, "the job to be requeued")
        assert cluster.states()[final] == "PENDING"  # the stop released nothing
        console = (teacher / f"slurm-{job}.out").read_text()
        assert console.count("] stopped by SIG") == starts and f"stopped by {signal_name} at iteration" in console
        assert console.count("resuming from the snapshot") == starts - 1
        stopped_at = stagestate.last_snapshot(teacher)
        assert stopped_at > before  # a snapshot at the stop
    cluster.wait_until_idle(timeout=600)
    console = (teacher / f"slurm-{job}.out").read_text()
    assert console.count("resuming from the snapshot at iteration") == 3
    summary = json.loads((teacher / train.SUMMARY).read_text())
    assert summary["iterations"] == 3600 and summary["final_test"]["iteration"] == 3600
    assert cluster.states()[job] == "COMPLETED"


def test_a_time_limit_is_each_jobs_time_and_the_stage_ends_through_its_requeues(cluster, tmp_path, digits_data):
    """--time-limit 1m under --slurm: the job's --time is one minute; its stage stops with a
    snapshot before it (Slurm's USR1 warning, here at once since it comes 300 s before the
    limit, or else the stage's own stop), and the job requeues itself until the stage is
    finished."""
    out = out_with_data(tmp_path, digits_data)
    submit(cluster, ["digits", "14", "8", "student", "--scale", "8", "--time-limit", "1m"], out)  # 9,600 iterations
    student = out / "digits" / "student-resnet8-w16.32.64-scale8"
    job = job_of(student)
    shown = run(["scontrol", "show", "job", job], env={"SLURM_CONF": str(cluster.conf)}).stdout
    assert "TimeLimit=00:01:00" in shown, shown
    cluster.wait_until_idle(timeout=900)
    console = (student / f"slurm-{job}.out").read_text()
    stops = re.findall(r"stopped by (?:SIGUSR1|the time limit) at iteration \d+, after a snapshot", console)
    assert stops and console.count("resuming from the snapshot at iteration") == len(stops), console[-3000:]
    assert console.count(f"[slurm] job {job} requeued") == len(stops)
    assert stagestate.is_finished(student) and cluster.states()[job] == "COMPLETED"


def test_a_failed_stage_cancels_its_dependents_and_status_names_it(cluster, tmp_path, digits_data):
    out = out_with_data(tmp_path, digits_data)
    teacher = out / "digits" / f"teacher-resnet14-w16.32.64-scale{SCALE}"
    (teacher / "snapshots").mkdir(parents=True)  # a damaged snapshot: resuming from it fails
    for suffix in (".complete", ".caffemodel", ".solverstate"):
        (teacher / "snapshots" / f"net_iter_5{suffix}").write_bytes(b"\x08 not a snapshot")
    args = ["digits", "14", "8", "kd", "--scale", SCALE, "--nets", "2"]
    submit(cluster, args, out)
    cluster.wait_until_idle(timeout=300)
    states = cluster.states()
    nets = [out / "digits" / f"kd-resnet14to8-scale{SCALE}" / f"stage2-net{k}" for k in (1, 2)]
    assert states[job_of(teacher)] == "FAILED"
    assert all(states[job_of(net)] == "CANCELLED" and not stagestate.is_finished(net) for net in nets)
    status = run([RUN_STAGES, *args, "--status", "--out", str(out)], check=False,
                 env={"SLURM_CONF": str(cluster.conf)})
    assert status.returncode == 1
    rows = {line.split("  ")[0]: line for line in status.stdout.splitlines()}
    teacher_row = rows["teacher ResNet-14"]
    assert " failed " in teacher_row and teacher_row.endswith(f"log {teacher / 'caffe.log'}")
    assert rows["kd stage2 net 1"].endswith("needs teacher ResNet-14, which failed")
