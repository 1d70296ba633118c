"""reproduce --jobs K: a target's stages as one graph, each stage once, K at once, on real Caffe."""
import json

from conftest import REPO, SCALE, out_with_data, run
from hintkd import graph, report, stagestate, train

RUN_STAGES = str(REPO / "run_stages.sh")
TABLE3 = ["reproduce", "table3", "--dataset", "digits", "--depths", "14,8", "--scale", SCALE]


def test_two_stages_at_a_time_finish_the_table_training_each_stage_once(tmp_path, digits_data):
    out = out_with_data(tmp_path, digits_data)
    result = run([RUN_STAGES, *TABLE3, "--jobs", "2", "--out", str(out)])
    study = report.Study("table3", out, "digits", (14, 8), float(SCALE))
    nodes = graph.build([study.run_options(m) for m in study.methods()])
    assert len(nodes) == 19  # teacher and student once, though four methods need the teacher
    assert all(stagestate.is_finished(folder) for folder in nodes)
    summaries = {folder: json.loads((folder / train.SUMMARY).read_text()) for folder in nodes}
    for folder, node in nodes.items():
        assert result.stdout.count(f"[graph] started {node.label} ({folder})") == 1
        log = (folder / "caffe.log").read_text()
        assert log.count("Initializing solver from parameters") == 1, folder  # trained once, never twice
        for need in node.needs:  # a stage started only after the stages it starts from had finished
            assert summaries[need]["finished"] <= summaries[folder]["started"], (need.name, folder.name)
        # each of the two at once with the cores shared out: cores / 2 OpenMP threads
        threads = int(graph.threads_per_stage(2))
        assert summaries[folder]["engine"].endswith(f"on the CPU, {threads} thread{'s' * (threads != 1)}")
    # Two at once, really: stages whose training overlapped in time. One at a time, no two
    # overlap at all; how much they overlap depends on how the stages' short lengths fall
    # (24% of the training time in one CI run, above a quarter in others), so any clear
    # overlap passes.
    spans = sorted((s["started"], s["finished"]) for s in summaries.values())
    overlap = sum(max(0.0, min(a[1], b[1]) - max(a[0], b[0])) for a, b in zip(spans, spans[1:]))
    busy = sum(end - start for start, end in spans)
    assert overlap > 0.05 * busy, (overlap, busy)
    assert "[graph] 19 done, 0 running, 0 waiting, 0 failed, 0 cancelled" in result.stdout
    table = (out / "reports" / f"table3-digits-resnet14to8-scale{SCALE}" / "table.md").read_text()
    # Each run's comparison goes to its file (6 paths printed); the console's tables are the target's.
    assert result.stdout.count("comparison with the paper: ") == 6
    assert result.stdout.count("### ") == table.count("### ") and table in result.stdout
    assert (out / "digits" / f"proposed-resnet14to8-scale{SCALE}" / "run.json").exists()
    again = run([RUN_STAGES, *TABLE3, "--jobs", "2", "--out", str(out)])
    assert again.stdout.count(": finished earlier\n") == 6  # each method
    assert again.stdout.count("] finished earlier: ") == 19 and "[graph] started" not in again.stdout  # each stage


def test_a_failed_stage_cancels_what_needs_it_and_says_so(tmp_path, digits_data):
    out = out_with_data(tmp_path, digits_data)
    # A teacher whose only snapshot is damaged: resuming from it fails.
    teacher = out / "digits" / f"teacher-resnet14-w16.32.64-scale{SCALE}"
    (teacher / "snapshots").mkdir(parents=True)
    for suffix in (".complete", ".caffemodel", ".solverstate"):
        (teacher / "snapshots" / f"net_iter_5{suffix}").write_bytes(b"\x08 not a snapshot")
    result = run([RUN_STAGES, *TABLE3, "--jobs", "2", "--out", str(out)], check=False)
    assert result.returncode == 1 and "a stage did not finish" in result.stderr
    assert f"[graph] FAILED teacher ResNet-14 (exit" in result.stdout and str(teacher / "caffe.log") in result.stdout
    assert "[graph] cancelled kd stage2 net 1: it needs teacher ResNet-14, which failed" in result.stdout
    assert "1 failed" in result.stdout and not stagestate.is_finished(teacher)
    assert stagestate.is_finished(out / "digits" / f"student-resnet8-w16.32.64-scale{SCALE}")  # it needs no teacher
    assert stagestate.failure(teacher)["log"] == str(teacher / "caffe.log")
    status = run([RUN_STAGES, *TABLE3, "--status", "--out", str(out)], check=False)
    assert status.returncode == 1
    teacher_row = next(line for line in status.stdout.splitlines() if line.startswith("teacher ResNet-14"))
    assert teacher_row.split()[2] == "failed" and teacher_row.endswith(f"log {teacher / 'caffe.log'}")
    kd_row = next(line for line in status.stdout.splitlines() if line.startswith("kd stage2 net 1"))
    assert "blocked" in kd_row and kd_row.endswith("needs teacher ResNet-14, which failed")
    assert "19 stages: 1 done, 1 failed, 17 blocked" in status.stdout  # the student needs no teacher


def test_status_before_anything_ran_says_it_has_no_estimate(tmp_path, digits_data):
    out = out_with_data(tmp_path, digits_data)
    status = run([RUN_STAGES, *TABLE3, "--status", "--out", str(out)])
    last = status.stdout.strip().splitlines()[-1]
    assert "not measured yet for any of the 19 unfinished stages" in last and "--dry-run" in last
    assert "0:00:00" not in status.stdout


def test_report_only_with_nothing_finished_fails_naming_the_runs(tmp_path):
    result = run([RUN_STAGES, *TABLE3, "--report-only", "--out", str(tmp_path / "empty")], check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert "nothing of table3 is finished" in result.stderr and "runs missing: kd, hint-kd" in result.stderr
    assert not (tmp_path / "empty").exists()
