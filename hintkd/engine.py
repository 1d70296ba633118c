"""Finds the Caffe build made by engine/install_caffe.sh and imports pycaffe from it.

Nobody sets PYTHONPATH or LD_LIBRARY_PATH: the prefix comes from the install
script itself (one place computes it), its python/ folder goes on sys.path, and
the libraries are found through the rpaths the Caffe Makefile writes.
"""
import ctypes
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO / "engine" / "install_caffe.sh"
# pycaffe links against Debian's libpython3.11 and numpy (caffe-facts.md).
SYSTEM_PYTHON = "/usr/bin/python3"


class EngineError(Exception):
    """Caffe is missing or cannot be imported; the message says what to do."""


def use_system_python():
    """Re-executes the current script under Debian's python3 if another one runs it."""
    if not os.path.exists(SYSTEM_PYTHON):
        return
    if os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON):
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON] + sys.argv)


def prefix_for(environ):
    """The build an environment selects: HINTKD_CAFFE_PREFIX, else the install script's
    prefix for HINTKD_CAFFE_VARIANT: cpu (the fast CPU build, the default), stock (BVLC's
    own CPU code, for comparison) or cuda (run_stages.sh --gpu sets it)."""
    if environ.get("HINTKD_CAFFE_PREFIX"):
        return Path(environ["HINTKD_CAFFE_PREFIX"])
    out = subprocess.run(["bash", str(INSTALL_SCRIPT), "--print-prefix"],
                         check=True, capture_output=True, text=True, env=environ)
    return Path(out.stdout.strip())


@functools.lru_cache(maxsize=None)
def caffe_prefix():
    """The build in use: the one this process's environment selects (prefix_for)."""
    return prefix_for(os.environ)


def build_info():
    return json.loads((caffe_prefix() / "BUILD-INFO.json").read_text())


@functools.lru_cache(maxsize=None)
def import_caffe(quiet=True):
    """Returns the caffe module. quiet keeps Caffe's INFO logging off stderr."""
    prefix = caffe_prefix()
    if not (prefix / "BUILD-INFO.json").exists():
        raise EngineError(f"Caffe is not installed at {prefix}; run {INSTALL_SCRIPT} "
                          "(run_stages.sh and tests/run.sh do this themselves)")
    # glog reads this once, when libcaffe loads; training needs Caffe's INFO lines.
    os.environ["GLOG_minloglevel"] = "2" if quiet else "0"
    sys.path.insert(0, str(prefix / "python"))
    try:
        import caffe
    except ImportError as e:
        raise EngineError(f"cannot import pycaffe from {prefix} under {sys.executable}: {e} "
                          f"(pycaffe needs {SYSTEM_PYTHON})") from None
    return caffe


def describe(gpu=None):
    """One line on the engine a stage runs on: which build, where, on which device."""
    info = build_info()
    kind = {"cpu": "fast CPU build", "stock": "stock CPU build", "cuda": "CUDA build"}[info["variant"]]
    if info["variant"] == "cpu":
        kind += ", portable" if "march=native" not in info.get("optimization", "") else ", for this CPU"
        if info.get("onednn", "2.6") != "2.6":  # HINTKD_ONEDNN=3.2 (engine/install_caffe.sh)
            kind += f", oneDNN {info['onednn']}"
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count())
    device = f"GPU {gpu}" if gpu is not None else f"the CPU, {threads} thread{'s' * (threads != 1)}"
    return f"Caffe {kind} ({caffe_prefix()}) on {device}"


# The fast build's lines when it changes its thread count (engine/patches/fast/05-threads-follow-free-cores.patch)
# and on how it sums the convolutions' weight gradients (07-weight-gradient-in-fixed-parts.patch)
# and which kernels its convolutions take (08-winograd-where-it-pays.patch).
THREADS_CHANGED = re.compile(r"\] Threads: (\d+) of (\d+) \(other processes kept")
BATCH_PARTS = re.compile(r"\] Weight gradients: the batch in (\d+) parts, added in order")
CONV_ALGORITHM = re.compile(r"\] Convolutions: .* \(HINTKD_CONV_ALGORITHM=(\w+)\)")


def thread_record(log_path, gpu=None):
    """What decided a CPU stage's sums: its thread count, whether it held throughout, and
    whether the numbers depend on it. The fast build follows the free cores, changing its
    thread count (and logging each change) while other processes keep cores busy; its sums
    do not depend on the count (each convolution's weight gradient adds fixed parts of the
    batch in order, logged once), so the same command gives the same numbers again on the
    same CPU model and build whatever ran beside it. Elsewhere only a count that held says so."""
    if gpu is not None:
        return {"device": f"GPU {gpu}"}
    most = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count())
    follows = build_info()["variant"] == "cpu" and os.environ.get("HINTKD_THREADS") != "fixed" and most > 1
    text = Path(log_path).read_text(errors="replace") if Path(log_path).exists() else ""
    changes = [int(m.group(1)) for m in THREADS_CHANGED.finditer(text)]
    parts = BATCH_PARTS.search(text)
    algorithm = CONV_ALGORITHM.search(text)
    return {"threads": most, "policy": "follows the free cores" if follows else "fixed",
            "changes": len(changes), "fewest": min([most, *changes]), "same_throughout": not changes,
            "batch_parts": int(parts.group(1)) if parts else None, "repeatable": bool(parts) or not changes,
            "convolutions": algorithm.group(1) if algorithm else None}


def describe_threads(record):
    """One line for the console: the thread count, whether it held, and whether the numbers
    would come again bit for bit."""
    if "device" in record:
        return f"on {record['device']}"
    threads = f"{record['threads']} thread{'s' * (record['threads'] != 1)}"
    held = (f"{threads} throughout" if record["same_throughout"] else
            f"the thread count changed {record['changes']} time{'s' * (record['changes'] != 1)} (down to "
            f"{record['fewest']} of {record['threads']}) while other processes kept cores busy")
    if not record["repeatable"]:
        return (f"{held}, so the order of some sums changed: another run may differ in the last digits "
                "(HINTKD_THREADS=fixed keeps the count)")
    why = (f" (weight gradients added over {record['batch_parts']} fixed parts of the batch, whatever the "
           "thread count)" if record["batch_parts"] else "")
    return f"{held}: the same command gives these numbers again bit for bit on this CPU model and build{why}"


def variant_for(gpu, requested):
    """The build a run takes: the CUDA build for a GPU; without one, the CPU build asked for
    (HINTKD_CAFFE_VARIANT), the fast one when that names the CUDA build, whose CPU mode
    cannot start without an NVIDIA driver (its data thread asks CUDA for a device)."""
    if gpu:
        return "cuda"
    return "cpu" if requested in ("", "cuda") else requested


def caffe_pb2():
    return import_caffe().proto.caffe_pb2


def check_gpu(device):
    """Raises EngineError, in CUDA's words, when GPU `device` cannot be used.

    Caffe itself aborts the process on a failed CUDA check (a glog CHECK), so the
    device is asked for through the CUDA runtime Caffe loaded, before Caffe is.
    """
    import_caffe()
    if build_info().get("variant") != "cuda":
        raise EngineError(f"the Caffe build at {caffe_prefix()} is CPU-only; GPUs need the CUDA build "
                          f"(HINTKD_CAFFE_VARIANT=cuda {INSTALL_SCRIPT} --cuda; run_stages.sh --gpu does this)")
    with open("/proc/self/maps") as maps:
        cudart = next((line.split()[-1] for line in maps if "/libcudart.so" in line), None)
    if cudart is None:
        raise EngineError("pycaffe is loaded but the CUDA runtime it links is not: the build is broken")
    runtime = ctypes.CDLL(cudart)
    runtime.cudaGetErrorString.restype = ctypes.c_char_p
    count = ctypes.c_int(0)
    error = runtime.cudaGetDeviceCount(ctypes.byref(count))
    if error:
        reason = runtime.cudaGetErrorString(error).decode()
        raise EngineError(f"GPU {device} was asked for, but CUDA reports: {reason} (cudaGetDeviceCount error "
                          f"{error}); run without --gpu to train on the CPU")
    if not 0 <= device < count.value:
        raise EngineError(f"GPU {device} was asked for, but CUDA sees {count.value} GPU(s): 0..{count.value - 1}")
