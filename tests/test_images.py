"""The images built from the Dockerfile (engine/build_images.sh), run as a user runs them:
the main job writes its results into a host folder, the real MNIST files are read from
/data, wrong input and --help answer, the GPU image trains on the CPU without a GPU and
stops in CUDA's words when asked for one.

CI (.ci/run) builds both images first and sets HINTKD_TEST_IMAGES=1, so there these tests
never skip; elsewhere they run when the images are present.
"""
import json
import os
import re
import sys

import pytest

from conftest import MNIST, REPO

sys.path.insert(0, str(REPO / "tests" / "helpers"))
import images  # noqa: E402

IMAGES = ["hintkd:cpu", "hintkd:gpu"]
USER = 1000  # the images' user


def built(name):
    if not images.exists(name):
        if os.environ.get("HINTKD_TEST_IMAGES"):
            pytest.fail(f"HINTKD_TEST_IMAGES is set but there is no image {name}")
        pytest.skip(f"no image {name} here (engine/build_images.sh builds it; CI does)")
    return name


@pytest.fixture(scope="module", params=IMAGES)
def image(request):
    return built(request.param)


def runs_folder(tmp_path):
    """A host folder for /runs that the images' user may write, as `docker run --user` needs."""
    folder = tmp_path / "runs"
    folder.mkdir()
    os.chown(folder, USER, USER)
    return folder


def test_the_image_is_the_toolkit_run_as_a_user_with_volumes(image):
    cfg = images.config(image)
    assert cfg["Entrypoint"] == ["/opt/hintkd/app/run_stages.sh"] and cfg["Cmd"] == ["--help"]
    assert cfg["User"] == "1000:1000" and set(cfg["Volumes"]) == {"/runs", "/data"}
    assert "HINTKD_OUT=/runs" in cfg["Env"] and "HINTKD_PORTABLE=1" in cfg["Env"]
    assert not any(e.startswith("HINTKD_CAFFE_VARIANT=") for e in cfg["Env"])  # chosen by --gpu


def test_help_by_default_and_a_wrong_input_in_one_line(image):
    shown = images.run(image)
    assert shown.returncode == 0 and "./run_stages.sh DATASET TEACHER STUDENT METHOD" in shown.stdout
    wrong = images.run(image, ["digits", "14", "8", "distill"])
    assert wrong.returncode == 2 and wrong.stdout == ""
    (line,) = wrong.stderr.strip().splitlines()  # one line, and nothing was started
    assert line.startswith("run_stages.sh: error: argument method: unknown method 'distill'")


def test_a_runs_folder_the_images_user_cannot_write_is_named_in_one_line(image, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir(mode=0o755)  # root's, as `mkdir runs` by root or a Docker daemon leaves it
    if os.stat(runs).st_uid == USER:
        pytest.skip("this test runs as the image's user: its folders are the image's")
    result = images.run(image, ["digits", "14", "8", "proposed"], volumes=[(runs, "/runs")])
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == 2 and line.startswith("run_stages.sh: error: --out /runs: /runs is not writable by "
                                                      "user 1000"), result.stderr
    assert '--user "$(id -u):$(id -g)"' in line and not list(runs.iterdir())


def test_every_build_in_the_image_finds_its_libraries(image):
    """ldd of each build's library, tool and pycaffe module against the runtime's packages."""
    script = ("set -e; for f in /opt/hintkd/cache/caffe-*/lib/libcaffe.so.* /opt/hintkd/cache/caffe-*/bin/caffe "
              "/opt/hintkd/cache/caffe-*/python/caffe/_caffe.so; do echo \"== $f\"; ldd \"$f\"; done")
    listing = images.run(image, ["-c", script], entrypoint=["/bin/bash"])
    shown = f"exit {listing.returncode}\nstdout:\n{listing.stdout}\nstderr:\n{listing.stderr}"
    assert listing.returncode == 0, shown
    checked = re.findall(r"^== (\S+)", listing.stdout, re.M)
    builds = {re.search(r"caffe-9\.0\.2-(\w+)-", f).group(1) for f in checked}
    assert builds == ({"cpu", "cuda"} if image.endswith("gpu") else {"cpu"}), shown
    assert len(checked) == 3 * len(builds), shown
    assert "not found" not in listing.stdout, shown


def test_the_main_job_writes_its_results_to_the_host(image, tmp_path):
    runs = runs_folder(tmp_path)
    result = images.run(image, ["digits", "14", "8", "proposed"], volumes=[(runs, "/runs")])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Without --gpu every stage trains on the fast CPU build, in the GPU image too, and says so.
    engines = set(re.findall(r"\] engine: Caffe (.+?) \(", result.stdout))
    assert engines == {"fast CPU build, portable"}, engines
    run_dir = runs / "digits" / "proposed-resnet14to8"
    nets = sorted(run_dir.glob("stage2-net*/summary.json"))
    assert len(nets) == 3
    for path in nets:
        assert json.loads(path.read_text())["final_test"]["accuracy"] > 0.5
    written = [run_dir / "comparison.md", run_dir / "training.png", run_dir / "run.json", *nets]
    for path in written:
        info = path.stat()
        assert info.st_uid == USER and info.st_mode & 0o044, path  # the user's, readable
    assert "comparison with the paper: /runs/digits/proposed-resnet14to8/comparison.md" in result.stdout


def test_real_mnist_from_the_data_volume(image, tmp_path):
    runs = runs_folder(tmp_path)
    result = images.run(image, ["mnist", "14", "8", "kd", "--quick", "--source", "/data/mnist", "--no-md5"],
                        volumes=[(runs, "/runs"), (MNIST, "/data/mnist", "ro")])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((runs / "data" / "mnist" / "manifest.json").read_text())
    assert manifest["train_count"] == 2000 and manifest["test_count"] == 1000
    assert len(list((runs / "mnist").glob("kd-resnet14to8-*/stage2-net*/summary.json"))) == 3


def test_the_gpu_image_without_a_gpu_stops_in_cudas_words(tmp_path):
    runs = runs_folder(tmp_path)
    result = images.run(built("hintkd:gpu"), ["digits", "14", "8", "student", "--gpu", "0", "--quick"], volumes=[(runs, "/runs")])
    assert result.returncode == 1
    assert "GPU 0 was asked for, but CUDA reports:" in result.stderr
    assert "Check failed" not in result.stderr and "Aborted" not in result.stderr
