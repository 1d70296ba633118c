"""The CUDA build of engine/install_caffe.sh --cuda: compiled and linked here, no GPU needed.

CI (.ci/run) installs it first (cached by recipe hash) and sets HINTKD_TEST_CUDA=1,
so there these tests never skip; elsewhere they run when the build is present.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO, run

INSTALL = str(REPO / "engine" / "install_caffe.sh")
CUDA = {"HINTKD_CAFFE_VARIANT": "cuda"}


def cuda_prefix():
    from pathlib import Path
    return Path(run(["bash", INSTALL, "--cuda", "--print-prefix"]).stdout.strip())


@pytest.fixture(scope="module")
def prefix():
    found = cuda_prefix()
    if not (found / "BUILD-INFO.json").exists():
        if os.environ.get("HINTKD_TEST_CUDA"):
            pytest.fail(f"HINTKD_TEST_CUDA is set but there is no CUDA build at {found}")
        pytest.skip("no CUDA build here (engine/install_caffe.sh --cuda; CI builds it)")
    return found


def test_cuda_and_cpu_builds_live_apart_and_follow_their_recipes(prefix):
    cpu = run(["bash", INSTALL, "--print-prefix"]).stdout.strip()
    assert prefix.name.startswith("caffe-9.0.2-cuda-") and "-cpu-" in cpu and str(prefix) != cpu
    info = json.loads((prefix / "BUILD-INFO.json").read_text())
    assert info["variant"] == "cuda" and "compute_90,code=compute_90" in info["cuda_arch"]
    for sm in (70, 75, 80, 86, 90):
        assert f"code=sm_{sm}" in info["cuda_arch"]
    other_arch = run(["bash", INSTALL, "--cuda", "--print-prefix"], env={"HINTKD_CUDA_ARCH": "86"}).stdout.strip()
    assert other_arch != str(prefix)
    bad = run(["bash", INSTALL, "--cuda", "--print-prefix"], env={"HINTKD_CUDA_ARCH": "sm86"}, check=False)
    assert bad.returncode == 2 and "not an SM version" in bad.stderr


def test_libcaffe_links_the_cuda_libraries_and_carries_gpu_code(prefix):
    (lib,) = prefix.glob("lib/libcaffe.so.*")
    linked = run(["ldd", str(lib)]).stdout
    for name in ("libcudart.so", "libcublas.so", "libcurand.so"):
        assert name in linked, name
    assert "not found" not in linked
    if shutil.which("cuobjdump"):
        listing = run(["cuobjdump", "--list-elf", str(lib)]).stdout
        assert {"sm_70", "sm_90"} <= set(re.findall(r"sm_\d+", listing))


def test_caffe_version_and_pycaffe_import_without_a_gpu(prefix):
    version = run([str(prefix / "bin" / "caffe"), "--version"], check=False)
    assert version.returncode == 0 and "1.0.0" in version.stdout + version.stderr
    code = ("import hintkd.engine as e, json; c = e.import_caffe(); c.set_mode_cpu(); "
            "print(json.dumps(e.build_info()))")
    out = run(["/usr/bin/python3", "-c", code], env=CUDA)
    assert json.loads(out.stdout.splitlines()[-1])["variant"] == "cuda"


def test_caffe_refuses_a_missing_gpu_with_its_own_message(prefix, tmp_path):
    """Caffe's binary aborts on its CHECK; the message is CUDA's and says what is wrong."""
    result = subprocess.run([str(prefix / "bin" / "caffe"), "device_query", "-gpu", "0"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "no CUDA-capable device is detected" in result.stderr or "CUDA driver version" in result.stderr


def test_the_driver_stops_cleanly_when_the_gpu_is_not_there(prefix, tmp_path, digits_data):
    (tmp_path / "data").mkdir()
    os.symlink(digits_data, tmp_path / "data" / "digits")
    result = run([str(REPO / "run_stages.sh"), "digits", "14", "8", "student", "--gpu", "0", "--scale", "0.05",
                  "--out", str(tmp_path)], check=False)
    assert result.returncode == 1
    assert "GPU 0 was asked for, but CUDA reports:" in result.stderr
    assert "Aborted" not in result.stderr and "Check failed" not in result.stderr


def test_a_bare_nvcc_is_not_a_toolkit(tmp_path):
    """A CUDA_HOME with nvcc alone (as this machine's nvcc 13) is passed over, saying why."""
    (tmp_path / "bin").mkdir()
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.4, V12.4.99'\n")
    nvcc.chmod(0o755)
    result = run(["bash", INSTALL, "--cuda", "--print-prefix"], env={"CUDA_HOME": str(tmp_path)})
    assert f"not using the CUDA toolkit at {tmp_path}" in result.stderr and "cuBLAS" in result.stderr
    assert result.stdout.strip() == str(cuda_prefix())  # Debian's toolkit, as without CUDA_HOME
    for header in ("cublas_v2.h", "curand.h"):
        (tmp_path / "include").mkdir(exist_ok=True)
        (tmp_path / "include" / header).write_text("")
    (tmp_path / "lib64").mkdir()
    for lib in ("libcublas.so", "libcurand.so"):
        (tmp_path / "lib64" / lib).write_text("")
    complete = run(["bash", INSTALL, "--cuda", "--print-prefix"], env={"CUDA_HOME": str(tmp_path)})
    assert "not using" not in complete.stderr.replace("/usr/local", "")
    assert complete.stdout.strip() != str(cuda_prefix())  # another toolkit, another prefix


def test_multi_gpu_is_refused_with_the_reason(tmp_path):
    """This Caffe source has no NCCL code, so a device list stops before anything runs."""
    result = run([str(REPO / "run_stages.sh"), "digits", "14", "8", "student", "--gpu", "0,1",
                  "--out", str(tmp_path)], check=False)
    assert result.returncode != 0 and not any(tmp_path.iterdir())
    assert "--gpu 0,1: multi-GPU data parallel is not available" in result.stderr and "NCCL" in result.stderr
    assert "or --jobs K to train K stages at once spread over these GPUs" in result.stderr


def test_jobs_spread_whole_stages_over_the_gpus_listed(prefix, tmp_path, digits_data):
    """--jobs 2 --gpu 0,1: each ready stage on the GPU with the fewest running stages. With no
    GPU here each stage stops at the driver's device check, which names its GPU."""
    (tmp_path / "data").mkdir()
    os.symlink(digits_data, tmp_path / "data" / "digits")
    result = run([str(REPO / "run_stages.sh"), "reproduce", "table3", "--dataset", "digits", "--depths", "14,8",
                  "--quick", "--jobs", "2", "--gpu", "0,1", "--out", str(tmp_path)], check=False)
    assert result.returncode == 1
    teacher = tmp_path / "digits" / "teacher-resnet14-w16.32.64-scale0.01"
    student = tmp_path / "digits" / "student-resnet8-w16.32.64-scale0.01"
    assert f"[graph] started teacher ResNet-14 ({teacher}) on GPU 0" in result.stdout
    assert f"[graph] started student ResNet-8 ({student}) on GPU 1" in result.stdout
    assert "GPU 0 was asked for, but CUDA reports:" in (teacher / "progress.log").read_text()
    assert "GPU 1 was asked for, but CUDA reports:" in (student / "progress.log").read_text()
