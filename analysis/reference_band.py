#!/usr/bin/python3
"""The reference band: what the tests' short runs of every method give on this machine,
under every configuration that sums in another order, kept for tests/test_reference.py.

    analysis/reference_band.py [--methods kd,proposed,...] [--add]

Runs `./run_stages.sh digits 14 8 METHOD --scale 0.05` (the method tests' runs: 60
iterations a stage) for every method, once per configuration:
  fast           the fast build on every core
  fast 1 thread  OMP_NUM_THREADS=1 (the same numbers as every core: kept as a check)
  oneDNN AVX2    ONEDNN_MAX_CPU_ISA=AVX2: oneDNN's kernels of a CPU without AVX-512
  oneDNN SSE4.1  ONEDNN_MAX_CPU_ISA=SSE41: those of a CPU without AVX
  portable       the fast build without -march=native (HINTKD_PORTABLE=1, the images')
  stock          BVLC's own CPU code (HINTKD_CAFFE_VARIANT=stock)
Each sums its floats in another order, as another CPU model does, so their spread is
what a machine changes. Every stage's numbers are read from its caffe.log and
summary.json: each loss term at iteration 0 and at the last displayed iteration, and the
final test's accuracy and cross-entropy. They go to tests/reference_band.json, one entry per CPU model
(--add keeps the other CPUs' entries), with the configurations and the command.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from analysis import measured  # noqa: E402
from hintkd import atomic, caffelog, engine, options  # noqa: E402

BAND = ROOT / "tests" / "reference_band.json"
SCALE = "0.05"  # the method tests' schedule (tests/conftest.py takes it from here): 60 iterations a digits stage
METHODS = [m for m in options.method_names() if m not in ("teacher", "student")]  # every teacher-student method
CONFIGURATIONS = {
    "fast": {},
    "fast 1 thread": {"OMP_NUM_THREADS": "1"},
    "oneDNN AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "oneDNN SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "portable": {"HINTKD_PORTABLE": "1"},
    "stock": {"HINTKD_CAFFE_VARIANT": "stock"},
}


def stage_numbers(folder):
    """The numbers of one stage that its method decides: every loss term at iteration 0 (the
    weights it was handed and the loss it trains, before any step) and at the end, and the
    final test's numbers."""
    summary = json.loads((folder / "summary.json").read_text())
    train = caffelog.parse_file(folder / "caffe.log").train
    first = train[min(train)]
    terms = [k for k in first if k not in ("iteration", "seconds", "lr")]
    # The last record with every term (Caffe's closing line gives the total loss alone).
    last = next(train[i] for i in sorted(train, reverse=True) if all(k in train[i] for k in terms))
    numbers = {"first": {k: first[k] for k in terms}, "last": {k: last[k] for k in terms}}
    if summary["final_test"]:
        numbers["test"] = {k: v for k, v in summary["final_test"].items() if k not in ("iteration", "seconds")}
    return numbers


def run_configuration(name, env, methods, out):
    env = dict(os.environ, HINTKD_CAFFE_PREFIX="", **env)
    variant = env.get("HINTKD_CAFFE_VARIANT", "cpu")
    subprocess.run(["bash", str(engine.INSTALL_SCRIPT), f"--{variant}"], check=True, stdout=subprocess.DEVNULL,
                   env=env)
    numbers = {}
    for method in methods:
        print(f"{name}: {method}", file=sys.stderr, flush=True)
        subprocess.run([str(ROOT / "run_stages.sh"), "digits", "14", "8", method, "--scale", SCALE, "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL, env=env)
    for summary_path in sorted((out / "digits").glob("*/**/summary.json")):
        numbers[str(summary_path.parent.relative_to(out / "digits"))] = stage_numbers(summary_path.parent)
    return numbers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--add", action="store_true", help="keep the entries of other CPU models in the file")
    args = parser.parse_args(argv)
    engine.use_system_python()
    cpu = measured.machine()["cpu"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, env in CONFIGURATIONS.items():
            runs[name] = run_configuration(name, env, args.methods.split(","), Path(tmp) / name.replace(" ", "-"))
    kept = json.loads(BAND.read_text()) if args.add and BAND.exists() else {}
    kept[cpu] = {"date": date.today().isoformat(), "cores": len(os.sched_getaffinity(0)), "os": platform.platform(),
                 "command": f"analysis/reference_band.py --methods {args.methods}",
                 "configurations": CONFIGURATIONS, "runs": runs}
    atomic.write_text(BAND, json.dumps(kept, indent=1, sort_keys=True) + "\n")  # never half-written
    print(f"wrote {BAND.relative_to(ROOT)} ({cpu})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
