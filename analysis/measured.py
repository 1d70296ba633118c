#!/usr/bin/python3
"""The numbers the README quotes, measured by running the commands that print them.

    analysis/measured.py            run the commands on this machine, keep what they
                                    printed in docs/measured.json, rewrite the quoted blocks
    analysis/measured.py --check    exit 1 when a quoted block differs from docs/measured.json
                                    (a number edited by hand, or a block not regenerated)

Each command runs from a fresh output folder with the Caffe build already installed
(the build's own time is printed by engine/install_caffe.sh and not timed here), one
command at a time. Run it on an idle machine: how much of the cores other processes used
meanwhile is kept beside each time. Blocks are marked in README.md and docs/*.md by
`<!-- measured:NAME -->` ... `<!-- /measured:NAME -->`; everything between is rewritten.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hintkd import engine, estimate, netgen, plan  # noqa: E402

RESULTS_NAME = "docs/measured.json"
RESULTS = ROOT / RESULTS_NAME
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
MAIN_JOB = ["digits", "14", "8", "proposed"]
MNIST_JOB = ["mnist", "32", "8", "student", "--quick", "--source"]


def run_options(job, out, scale=1.0):
    """The planner's options for a job's DATASET TEACHER STUDENT METHOD: where its folders go."""
    dataset, teacher, student, method = job[:4]
    return plan.RunOptions(dataset, int(teacher), int(student), method, Path(out) / "data" / dataset, Path(out),
                           scale=scale)
BLOCK = re.compile(r"(<!-- measured:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /measured:(?P=name) -->)", re.S)


def machine():
    """What the numbers were measured on: the CPU by name and by the model name and flags its
    builds are made for (cpu_id, engine/install_caffe.sh's hash of them), and the build."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor())
    cpu_id = subprocess.run(["bash", str(engine.INSTALL_SCRIPT), "--print-cpu-id"], check=True,
                            capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cpu_id": cpu_id,
            "cores": os.cpu_count(), "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())),
            "os": platform.freedesktop_os_release().get("PRETTY_NAME", platform.system()),
            "engine": re.sub(r"\(/\S*/(caffe-[^)/]+)\)", r"(\1)", engine.describe()),  # the build, not its folder
            "date": date.today().isoformat()}


def run_stages(args, out, env=None):
    """Runs ./run_stages.sh ARGS --out OUT; returns (seconds, other processes' share of the cores meanwhile)."""
    started = time.perf_counter()
    with estimate.OthersMeter() as others:
        subprocess.run([str(ROOT / "run_stages.sh"), *args, "--out", str(out)], check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, **(env or {})))
    return round(time.perf_counter() - started, 1), round(others.share(), 3)


def accuracies(run_json):
    """{stage label: final test accuracy in %} of a finished run."""
    stages = json.loads(Path(run_json).read_text())["stages"]
    return {s["label"]: round(100 * s["final_test"]["accuracy"], 2) for s in stages if s["final_test"]}


def main_job_accuracies(out):
    opts = run_options(MAIN_JOB, out)
    return accuracies(Path(out) / opts.dataset / opts.run_id() / "run.json")


def measure():
    results = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "main"
        seconds, others = run_stages(MAIN_JOB, out)
        results["main_job"] = {"command": "./run_stages.sh " + " ".join(MAIN_JOB), "seconds": seconds,
                               "others": others, "accuracy": main_job_accuracies(out)}
        print(f"main job: {seconds} s", file=sys.stderr)
        # The same job on the images' portable build: what another build (or CPU) changes.
        out = Path(tmp) / "portable"
        run_stages(MAIN_JOB, out, {"HINTKD_PORTABLE": "1"})
        results["main_job_portable"] = {"accuracy": main_job_accuracies(out)}
        dry = subprocess.run([str(ROOT / "run_stages.sh"), "reproduce", "table1", "--dry-run", "--out",
                              str(Path(tmp) / "dry")], check=True, capture_output=True, text=True).stdout
        results["table1_dry_run"] = {"command": "./run_stages.sh reproduce table1 --dry-run",
                                     "estimate": re.search(r"about (\d+:\d\d:\d\d) on this machine", dry).group(1)}
        if MNIST.is_dir():
            out = Path(tmp) / "mnist"
            seconds, others = run_stages([*MNIST_JOB, str(MNIST)], out)
            opts = run_options(MNIST_JOB, out, netgen.quick_scale())
            summary = json.loads((out / opts.dataset / opts.net_id("student") / "summary.json").read_text())
            results["mnist_quick"] = {"command": "./run_stages.sh " + " ".join(MNIST_JOB) + " ../shared/data/mnist",
                                      "seconds": seconds, "others": others,
                                      "accuracy": round(100 * summary["final_test"]["accuracy"], 2)}
            print(f"mnist --quick: {seconds} s", file=sys.stderr)
    return results


def minutes_seconds(seconds):
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def teacher_and_nets(accuracy):
    """A main job's accuracies as the README quotes them: the teacher's, and Nets 1-3's."""
    teacher = next(v for k, v in accuracy.items() if k.startswith("teacher"))
    return teacher, " / ".join(f"{v:.2f}" for k, v in accuracy.items() if "stage2" in k)


def render(results):
    """{block name: Markdown} for every quoted block."""
    m, job = results["machine"], results["main_job"]
    where = f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, {m['os']}, {m['date']}"
    teacher, nets = teacher_and_nets(job["accuracy"])
    portable_teacher, portable_nets = teacher_and_nets(results["main_job_portable"]["accuracy"])
    whole_hours, minutes, _ = map(int, results["table1_dry_run"]["estimate"].split(":"))
    hours = whole_hours + minutes / 60
    blocks = {
        "main-job": (f"On {where}, `{job['command']}` took {minutes_seconds(job['seconds'])} with the "
                     f"Caffe build installed and ended with the teacher at {teacher:.2f}% and Nets 1-3 at "
                     f"{nets}% on the 300 digits test images (`analysis/measured.py` ran it and wrote this "
                     "sentence). The same command on the same CPU model and Caffe build gives these accuracies "
                     "again bit for bit, on any thread count and whatever else runs beside it (the fast build "
                     "takes fewer threads while other processes keep cores busy, and its sums do not follow "
                     "them; each stage's `summary.json` says so under `threads`). Another CPU or build sums in "
                     "another order: the images' portable build (without `-march=native`) on the same machine "
                     f"ended with the teacher at {portable_teacher:.2f}% and Nets 1-3 at {portable_nets}%."),
        "table1-estimate": (f"`{results['table1_dry_run']['command']}` estimated about {hours:.0f} hours "
                            f"({hours / 24:.1f} days) for the whole of Table 1, one stage at a time, on {where}."),
    }
    lines = [f"Machine: {where}; engine: {m['engine']}.", "",
             "| command | wall time | other processes' share of the cores meanwhile | result |", "|---|---|---|---|",
             f"| `{job['command']}` | {minutes_seconds(job['seconds'])} | {job['others']:.0%} | "
             f"teacher {teacher:.2f}%, Nets 1-3 {nets}% |"]
    if "mnist_quick" in results:
        q = results["mnist_quick"]
        lines.append(f"| `{q['command']}` | {minutes_seconds(q['seconds'])} | {q['others']:.0%} | "
                     f"{q['accuracy']:.2f}% on the 10,000 MNIST test images |")
    lines.append(f"| `{results['table1_dry_run']['command']}` | - | - | "
                 f"about {results['table1_dry_run']['estimate']} for the whole table |")
    blocks["commands"] = "\n".join(lines)
    return blocks


def rewrite(text, blocks):
    return BLOCK.sub(lambda m: m.group(1) + blocks[m.group("name")].rstrip("\n") + "\n" + m.group(4)
                     if m.group("name") in blocks else m.group(0), text)


def stale_blocks(results):
    """(document, block name) pairs whose text is not the rendering of RESULTS."""
    blocks = render(results)
    stale = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in BLOCK.finditer(text):
            name = match.group("name")
            if name not in blocks or match.group("body").rstrip("\n") != blocks[name].rstrip("\n"):
                stale.append((document.relative_to(ROOT), name))
    return stale


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare the quoted blocks with docs/measured.json")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_blocks(json.loads(RESULTS.read_text()))
        for document, name in stale:
            print(f"{document}: block '{name}' is not what {RESULTS_NAME} renders "
                  "(run analysis/measured.py)", file=sys.stderr)
        return 1 if stale else 0
    engine.use_system_python()
    results = measure()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    blocks = render(results)
    for document in DOCUMENTS:
        text = document.read_text()
        if BLOCK.search(text):
            document.write_text(rewrite(text, blocks))
    print(f"wrote {RESULTS_NAME} and the blocks it renders", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
