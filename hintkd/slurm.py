"""The graph's unfinished stages as Slurm jobs, with dependencies that mirror it.

    run_stages.sh ... METHOD --slurm [--partition P --time T --gres G ...]
    run_stages.sh reproduce TARGET --slurm [...]
    python3 -m hintkd.slurm job STAGE_DIR [--gpu N]     what each job runs

Each stage is one job, except a run's Stage 2 nets, which need the same stages:
they are one job array (task k trains Net k; --array-throttle of them at once).
A job waits (afterok) for the jobs of the stages whose weights it starts from,
and --kill-on-invalid-dep cancels it when one of those fails. A last job runs the
user's command again without --slurm: every stage is finished by then, so it
only writes the summaries and the table. Each stage folder keeps its job's id in
slurm.json: submitting again skips stages that are finished and stages whose job
Slurm still has queued or running, so no stage is submitted twice. What is
finished is always read from the files (a job Slurm has forgotten says nothing).

Stopping. Jobs are submitted with --requeue and --signal=B:USR1@300 (a warning
5 minutes before the time limit). hintkd.train stops at the next iteration after
a snapshot, with exit code 75, on SIGUSR1 or SIGTERM; the job then requeues itself
when Slurm is not ending it already (the warning; `scancel -b --signal=TERM`).
A job that Slurm preempts or requeues (`scontrol requeue`), Slurm requeues; a
cancelled job (`scancel`) stays cancelled and its stage resumes when submitted
again. A requeued job resumes from the snapshot.
"""
import argparse
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hintkd import engine, estimate, options, stagestate, train
from hintkd.atomic import write_json

JOB_FILE = "slurm.json"
WARNING_SECONDS = 300  # --signal=B:USR1@300: time for an iteration and a snapshot before the limit
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE"}
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED"}


class SlurmError(Exception):
    """sbatch refused a job; the message says what it printed."""


@dataclass
class Job:
    id: str  # 123, or 123_2 for task 2 of an array
    state: str


def queue():
    """{job id: state} of this user's jobs that Slurm still holds, array tasks one by one."""
    try:
        result = subprocess.run(["squeue", "--me", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True,
                                timeout=120)
    except FileNotFoundError:
        return {}
    if result.returncode != 0:
        raise SlurmError(f"squeue failed: {result.stderr.strip()}")
    return dict(line.split() for line in result.stdout.splitlines() if line.strip())


def jobs_of(nodes, states=None):
    """{stage folder: Job} of the stages whose recorded job Slurm has queued or running
    (states: queue() when the caller has it)."""
    recorded = {f: json.loads((f / JOB_FILE).read_text())["job"] for f in nodes if (f / JOB_FILE).exists()}
    if not recorded:
        return {}
    if states is None:
        try:
            states = queue()
        except SlurmError as e:  # the files still say what is finished; only the queue is unknown
            print(f"[slurm] {e}: the queue's state is unknown", file=sys.stderr)
            return {}
    return {f: Job(job, states[job]) for f, job in recorded.items()
            if states.get(job, "COMPLETED") not in ENDED and not stagestate.is_finished(f)}


def net_number(folder):
    found = re.search(r"net(\d+)$", folder.name)
    return int(found.group(1)) if found else None


def groups(folders):
    """Stages in submission order, a run's Stage 2 nets together (one array)."""
    grouped = {}
    for folder in folders:
        key = estimate.kind_of(folder) if net_number(folder) else str(folder)
        grouped.setdefault(key, []).append(folder)
    return list(grouped.values())


def job_name(text):
    return "hintkd-" + re.sub(r"[^\w.]+", "-", text).strip("-")


def stage_script(members, args):
    """The batch script of one stage, or of a job array (task k: Net k)."""
    prefix = f"{args.job_prefix} " if args.job_prefix else ""
    gpu = f" --gpu {args.gpu[0]}" if args.gpu else ""  # the device Slurm gave the job (--gres)
    limit = f" --time-limit {args.time_limit}" if getattr(args, "time_limit", None) else ""
    if len(members) == 1 and not net_number(members[0]):
        choose = f"stage={shlex.quote(str(members[0]))}"
    else:
        table = " ".join(f"[{net_number(m)}]={shlex.quote(str(m))}" for m in members)
        choose = f"declare -A stages=({table})\nstage=${{stages[$SLURM_ARRAY_TASK_ID]}}"
    return f"""#!/bin/bash
# hintkd: one stage of the graph (hintkd/slurm.py)
export HINTKD_STARTED=${{EPOCHREALTIME/,/.}}  # the job's --time-limit counts from here
{choose}
cd {shlex.quote(str(engine.REPO))}
export PYTHONPATH={shlex.quote(str(engine.REPO))} OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}}
# Caffe is built once per machine type into $HINTKD_CACHE (shared storage), by the first job to need it.
{prefix}engine/install_caffe.sh >/dev/null
exec {prefix}{engine.SYSTEM_PYTHON} -m hintkd.slurm job "$stage"{gpu}{limit}
"""


def final_script(command, args):
    prefix = f"{args.job_prefix} " if args.job_prefix else ""
    return f"""#!/bin/bash
# hintkd: every stage is finished; the summaries and the table (hintkd/slurm.py)
cd {shlex.quote(str(engine.REPO))}
export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}}
exec {prefix}{shlex.join(command)}
"""


def sbatch(script, name, output, args, dependencies=(), array=None):
    command = ["sbatch", "--parsable", f"--job-name={name}", f"--output={output}", "--requeue",
               "--open-mode=append", f"--signal=B:USR1@{WARNING_SECONDS}", "--kill-on-invalid-dep=yes"]
    command += [f"--dependency=afterok:{':'.join(dependencies)}"] if dependencies else []
    command += [f"--array={array}"] if array else []
    for option in ("partition", "time", "gres", "cpus_per_task"):
        if getattr(args, option) is not None:
            command.append(f"--{option.replace('_', '-')}={getattr(args, option)}")
    if getattr(args, "time_limit", None):  # each job's own limit; the USR1 warning keeps its margin before it
        command.append(f"--time={options.slurm_time(args.time_limit)}")
    command += shlex.split(args.sbatch_args)
    try:
        result = subprocess.run(command, input=script, capture_output=True, text=True)
    except FileNotFoundError:
        raise SlurmError("sbatch is not installed here: submit from a machine of the Slurm cluster") from None
    if result.returncode != 0:
        raise SlurmError(f"sbatch refused {name}: {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]  # "id" or "id;cluster"


def submit(nodes, args, final_command, out=sys.stdout):
    """Submits every unfinished stage not already queued or running, and a final job;
    prints the job ids and how to follow them. Returns an exit code."""
    try:
        states = queue()  # no queue, no submission: it could duplicate queued jobs
        active = jobs_of(nodes, states)
        ids = {folder: job.id for folder, job in active.items()}
        to_submit = [f for f in nodes if not stagestate.is_finished(f) and f not in active]
        for folder, job in active.items():
            print(f"[slurm] {nodes[folder].label}: already {job.state.lower()} as job {job.id}", file=out)
        for members in groups(to_submit):
            needs = {n for m in members for n in nodes[m].needs if not stagestate.is_finished(n)}
            dependencies = sorted({ids[n] for n in needs})
            first = members[0]
            if len(members) == 1 and not net_number(first):
                job = sbatch(stage_script(members, args), job_name(nodes[first].label), first / "slurm-%j.out",
                             args, dependencies)
                submitted = {first: job}
            else:
                numbers = [net_number(m) for m in members]
                array = ",".join(map(str, numbers)) + (f"%{args.array_throttle}" if args.array_throttle else "")
                output = first.parent / re.sub(r"net\d+$", "net%a", first.name) / "slurm-%A_%a.out"
                job = sbatch(stage_script(members, args), job_name(re.sub(r" net \d+$", "", nodes[first].label)),
                             output, args, dependencies, array)
                submitted = {m: f"{job}_{k}" for m, k in zip(members, numbers)}
            for folder, job_id in submitted.items():
                ids[folder] = job_id
                write_json(folder / JOB_FILE, {"job": job_id, "submitted": time.time()})
                print(f"[slurm] {nodes[folder].label}: job {job_id}"
                      + (f", after {', '.join(dependencies)}" if dependencies else ""), file=out)
        final = final_job(nodes, args, final_command, ids, states if not to_submit else None, out)
    except SlurmError as e:
        print(f"run_stages.sh: error: {e}", file=sys.stderr)
        return 1
    print(f"[slurm] {len(to_submit)} stages submitted, {len(active)} already in the queue"
          + (f"; the summaries and the table: job {final}" if final else ""), file=out)
    print(f"[slurm] follow them: squeue --me   or   {shlex.join([*final_command, '--status'])}", file=out)
    return 0


def final_job(nodes, args, command, ids, states, out):
    """The job that runs the command without --slurm once every stage is finished; one per
    command: an earlier one still in the queue (states) is kept when no stage was submitted."""
    key = hashlib.sha256(shlex.join(command).encode()).hexdigest()[:12]
    record = Path(args.out).resolve() / "slurm" / f"final-{key}.json"
    if record.exists() and states is not None:
        earlier = json.loads(record.read_text())["job"]
        if states.get(earlier, "COMPLETED") not in ENDED:
            print(f"[slurm] the final job is already queued: job {earlier}", file=out)
            return earlier
    record.parent.mkdir(parents=True, exist_ok=True)
    dependencies = sorted({ids[f] for f in nodes if not stagestate.is_finished(f)})
    job = sbatch(final_script(command, args), job_name("final " + " ".join(command[1:5])),
                 record.parent / "final-%j.out", args, dependencies)
    write_json(record, {"job": job, "command": command, "submitted": time.time()})
    return job


def job(stage_dir, gpu=None, time_limit=None):
    """What a stage's job runs: the stage, in a process of its own so that a crash is
    recorded too. Stopped by a signal that Slurm did not send to end the job (the
    time-limit warning, scancel -b --signal), or by its own --time-limit (the job's
    --time: the stage stops before it, as on one machine), the job requeues itself,
    unless it made no progress (a time limit shorter than the warning would requeue
    forever)."""
    started_from = stagestate.last_snapshot(stage_dir)
    command = [engine.SYSTEM_PYTHON, "-m", "hintkd.train", str(stage_dir)]
    if time_limit:  # Slurm counts whole seconds from the job's start: one second kept aside for that
        command += ["--stop-at", f"{float(os.environ.get('HINTKD_STARTED') or time.time()) + time_limit - 1:.3f}"]
    stage = subprocess.Popen(command + (["--gpu", str(gpu)] if gpu is not None else []))
    for signum in (signal.SIGTERM, signal.SIGUSR1):  # the batch shell gets them; the stage acts on them
        signal.signal(signum, lambda number, frame: stage.send_signal(number))
    code = stage.wait()
    job_id = os.environ.get("SLURM_JOB_ID")
    if train.record_exit(stage_dir, code) != "stopped" or not job_id:
        return code
    state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    if state.stdout.strip() != "RUNNING":  # COMPLETING: Slurm is requeueing or cancelling it already
        return code
    if stagestate.last_snapshot(stage_dir) <= started_from:
        train.mark_failed(stage_dir, f"job {job_id} was told to stop before it trained an iteration: a time limit "
                                     f"(--time) well above the {WARNING_SECONDS} s warning lets it go on")
        return 1
    requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    print(f"[slurm] job {job_id} requeued: the stage resumes from its snapshot" if requeue.returncode == 0
          else f"[slurm] scontrol requeue {job_id}: {requeue.stderr.strip()}", flush=True)
    return code


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m hintkd.slurm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    job_parser = sub.add_parser("job", help="train one stage inside a Slurm job")
    job_parser.add_argument("stage_dir")
    job_parser.add_argument("--gpu", type=int)
    job_parser.add_argument("--time-limit", type=int, help="the job's --time in seconds")
    args = parser.parse_args(argv)
    return job(args.stage_dir, args.gpu, args.time_limit)


if __name__ == "__main__":
    engine.use_system_python()
    sys.exit(main())
