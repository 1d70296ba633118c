"""The fast build on shared cores: a run's thread count follows the cores other
processes leave free (engine/patches/fast/05-threads-follow-free-cores.patch).

A real digits teacher stage (run_stages.sh, real LMDB) starts beside a busy
process: its log must say it went down to fewer threads, and in that stretch at
most that many of its threads may work (the OpenMP threads and oneDNN's
convolutions alike: a convolution that kept its old thread count keeps a second
thread busy). When the busy process ends, the stage must take every core back,
and its threads must work again. With HINTKD_THREADS=fixed the thread count stays.
Whatever the thread count, the numbers stay: a short stage on 1 thread, on 2 and
beside a busy process writes the same weights bit for bit
(engine/patches/fast/07-weight-gradient-in-fixed-parts.patch).

Which threads work is read from /proc/PID/task/*/stat (CPU time per thread over
WINDOW seconds), not from how fast anything ran: these machines are too noisy
for timed tests. The speed is measured by analysis/benchmark_engines.py --shared.
"""
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, engine, out_with_data

RUN_STAGES = str(REPO / "run_stages.sh")
CORES = len(os.sched_getaffinity(0))
WINDOW = 1.5      # seconds of CPU time per thread sampled
WORKING = 0.25    # a thread that used this share of a core in the window works
# The stage at twice the default schedule (2,400 iterations, about 20 s on 2 cores): long
# enough to see it go down and back up.
STAGE = ["digits", "14", "8", "teacher", "--scale", "2"]
BATCH_PARTS = 8  # the fast build's default (07-weight-gradient-in-fixed-parts.patch)

pytestmark = pytest.mark.skipif(CORES < 2, reason="needs at least 2 cores to share")


def busy_cores(seconds=1.0):
    """How many of this process's CPUs others kept busy over `seconds` (/proc/stat)."""
    def busy_seconds():
        total = 0
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu" and int(name[3:]) in os.sched_getaffinity(0):
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[:8])
                total += user + nice + system + irq + softirq + steal
        return total / os.sysconf("SC_CLK_TCK")
    before = busy_seconds()
    time.sleep(seconds)
    return (busy_seconds() - before) / seconds


@pytest.fixture
def idle_machine():
    load = busy_cores()
    if load > 0.5:
        pytest.skip(f"other processes keep {load:.1f} cores busy: the test needs the cores to itself")


def thread_cpu_seconds(pid):
    """{thread id: CPU seconds so far} of the process's threads."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        seconds[task.name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return seconds


def working_threads(pid):
    before = thread_cpu_seconds(pid)
    time.sleep(WINDOW)
    after = thread_cpu_seconds(pid)
    return sum((after[t] - before.get(t, 0.0)) / WINDOW >= WORKING for t in after)


def wait_for_line(log, text, since=0, timeout=60):
    """The first line of the growing log at or after line `since` that holds text, and its index."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        for index in range(since, len(lines)):
            if text in lines[index]:
                return lines[index], index
        time.sleep(0.1)
    raise AssertionError(f"no '{text}' in {log} after {timeout} s:\n" + (log.read_text() if log.exists() else ""))


@contextlib.contextmanager
def stage_running(out, env=None):
    """The stage, its caffe.log and the pid of the process that trains (glog's thread id
    of the solver's lines: the main thread); the driver and its stage are killed after."""
    stage = subprocess.Popen([RUN_STAGES, *STAGE, "--out", str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=dict(os.environ, **(env or {})),
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("digits/teacher-*/caffe.log")):
            assert stage.poll() is None and time.monotonic() < deadline, stage.stdout.read()
            time.sleep(0.1)
        (log,) = out.glob("digits/teacher-*/caffe.log")
        line, _ = wait_for_line(log, "Initializing solver")
        yield stage, log, int(line.split()[2])
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
            stage.communicate()


@pytest.fixture
def busy(idle_machine):
    """A busy process beside the test, on cores that were idle."""
    process = subprocess.Popen([engine.SYSTEM_PYTHON, "-c", "while True: pass"])
    yield process
    process.kill()
    process.wait()


def test_a_run_takes_the_cores_other_processes_leave(tmp_path, digits_data, busy):
    with stage_running(out_with_data(tmp_path, digits_data)) as (stage, log, pid):
        line, index = wait_for_line(log, "Threads: ")
        fewer, most = (int(n) for n in line.split("Threads: ")[1].split(" (")[0].split(" of "))
        assert most == CORES and fewer < most, line
        assert working_threads(pid) <= fewer

        busy.kill()
        wait_for_line(log, f"Threads: {most} of {most}", since=index + 1)
        assert working_threads(pid) >= 2
        output, _ = stage.communicate(timeout=300)
        assert stage.returncode == 0, output
        assert "Optimization Done" in log.read_text()
    # The record says what ran: the thread count changed, so the numbers may not repeat.
    threads = json.loads((log.parent / "summary.json").read_text())["threads"]
    assert threads["policy"] == "follows the free cores" and threads["threads"] == most, threads
    assert not threads["same_throughout"] and threads["changes"] >= 2 and threads["fewest"] == fewer, threads
    assert threads["repeatable"] and threads["batch_parts"] == BATCH_PARTS, threads
    assert (f"the thread count changed {threads['changes']} times (down to {fewer} of {most}) while other "
            "processes kept cores busy: the same command gives these numbers again bit for bit") in output


def test_fixed_threads_stay(tmp_path, digits_data, busy):
    # At 2 threads beside the busy process the stage would take minutes: it is killed after.
    with stage_running(out_with_data(tmp_path, digits_data), {"HINTKD_THREADS": "fixed"}) as (_, log, pid):
        time.sleep(2)  # four chances to change
        assert working_threads(pid) >= 2
        assert "Threads: " not in log.read_text()


def test_fixed_threads_are_recorded_as_held(tmp_path, digits_data):
    out = out_with_data(tmp_path, digits_data)
    result = subprocess.run([RUN_STAGES, "digits", "14", "8", "teacher", "--scale", "0.1", "--out", str(out)],
                            capture_output=True, text=True, env=dict(os.environ, HINTKD_THREADS="fixed"))
    assert result.returncode == 0, result.stderr
    (summary,) = out.glob("digits/teacher-*/summary.json")
    threads = json.loads(summary.read_text())["threads"]
    assert threads == {"threads": CORES, "policy": "fixed", "changes": 0, "fewest": CORES, "same_throughout": True,
                       "batch_parts": BATCH_PARTS, "repeatable": True, "convolutions": "auto"}
    assert f"{CORES} threads throughout: the same command gives these numbers again bit for bit" in result.stdout


def test_the_numbers_do_not_depend_on_the_threads_or_the_load(tmp_path, digits_data, idle_machine):
    """The same short stage on 1 thread, on every core, and beside a busy process (its thread
    count then changes while it trains) ends with the same weights bit for bit and the same
    accuracies and losses: no sum's order follows the thread count."""
    runs = {}
    for case, env in (("1 thread", {"OMP_NUM_THREADS": "1"}), ("every core", {}), ("beside a busy process", {})):
        out = out_with_data(tmp_path / case.replace(" ", "-"), digits_data)
        busy = subprocess.Popen([engine.SYSTEM_PYTHON, "-c", "while True: pass"]) if "busy" in case else None
        try:
            result = subprocess.run([RUN_STAGES, "digits", "14", "8", "teacher", "--scale", "0.25", "--out", str(out)],
                                    capture_output=True, text=True, env=dict(os.environ, **env))
        finally:
            if busy:
                busy.kill()
                busy.wait()
        assert result.returncode == 0, result.stderr
        (stage,) = out.glob("digits/teacher-*")
        runs[case] = json.loads((stage / "summary.json").read_text()), (stage / "final.caffemodel").read_bytes()
    threads = {case: summary["threads"] for case, (summary, _) in runs.items()}
    assert threads["1 thread"]["threads"] == 1 and threads["every core"]["threads"] == CORES, threads
    assert threads["beside a busy process"]["changes"] >= 1, threads  # else the load changed nothing
    assert all(t["repeatable"] and t["batch_parts"] == BATCH_PARTS for t in threads.values()), threads
    alone, weights = runs["every core"]
    for case, (summary, case_weights) in runs.items():
        assert case_weights == weights, f"{case}: other weights than on every core of an idle machine"
        for key in ("final_test", "best_test", "final_losses"):
            assert numbers(summary[key]) == numbers(alone[key]), (case, key)


def numbers(record):
    """A summary's record of a test or of losses, without the seconds it took."""
    return {key: value for key, value in record.items() if key != "seconds"}
