"""The Dockerfile calls the project's scripts and nothing else, and lints clean
(tests/test_images.py runs the images it builds)."""
import re
import shutil

import pytest

from conftest import REPO, run

DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_two_targets_on_debian12_with_the_cpu_build_in_both():
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", DOCKERFILE, re.M)
    assert stages == [("debian:12", "build-cpu"), ("debian:12", "build-gpu"), ("scratch", "app"),
                      ("debian:12", "runtime"), ("runtime", "cpu"), ("runtime", "gpu")]
    assert stages[-1][1] == "gpu"  # a plain `docker build` gives the GPU image, as before
    targets = {name: DOCKERFILE.split(f"AS {name}\n", 1)[1].split("\nFROM ", 1)[0] for _, name in stages}
    assert "COPY --from=build-cpu /opt/hintkd/cache/" in targets["cpu"] and "build-gpu" not in targets["cpu"]
    assert "COPY --from=build-cpu /opt/hintkd/cache/" in targets["gpu"]
    assert "COPY --from=build-gpu /opt/hintkd/cache/" in targets["gpu"]
    # Nothing in the build downloads from PyPI when the context holds the source, and what
    # the context hands in never reaches an image (the app's engine/ is build-cpu's, cleaned);
    # the CPU build does not see the handed-in CUDA build (its layers stay cached).
    assert "rm -rf /opt/hintkd/cache/src /opt/hintkd/src/engine/build-inputs" in targets["build-cpu"]
    assert "engine/prebuilt" not in targets["build-cpu"] and not re.search(r"^COPY engine/ ", targets["build-cpu"], re.M)
    assert "COPY engine/ /opt/hintkd/src/engine/" in targets["build-gpu"]
    assert "COPY --from=build-cpu /opt/hintkd/src/engine/ /opt/hintkd/app/engine/" in targets["app"]
    assert not re.search(r"^COPY (\.|engine/?) ", targets["app"], re.M)
    assert "HINTKD_PORTABLE=1" in targets["build-cpu"] and "HINTKD_PORTABLE=1" in targets["runtime"]


def test_users_volumes_and_the_driver_in_both_images():
    for name in ("cpu", "gpu"):
        target = DOCKERFILE.split(f"AS {name}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^USER 1000:1000$", target, re.M)
        assert 'VOLUME ["/runs", "/data"]' in target
        assert 'ENTRYPOINT ["/opt/hintkd/app/run_stages.sh"]' in target


def test_every_run_step_is_a_project_script():
    for step in re.findall(r"^RUN (.+?)(?<!\\)$", DOCKERFILE, re.M | re.S):
        first = step.split("&&")[0].strip()
        assert first.startswith("/opt/hintkd/") and "install_caffe.sh" in first, step


def test_the_runtime_install_is_what_a_build_needs_to_run():
    """--runtime installs no compiler and builds nothing (here every package is present: a no-op)."""
    result = run(["bash", str(REPO / "engine" / "install_caffe.sh"), "--runtime"])
    assert result.stdout == "" and "building" not in result.stderr


@pytest.mark.skipif(not shutil.which("hadolint"), reason="hadolint is not installed (.ci/run installs it)")
def test_hadolint_is_clean():
    assert run(["hadolint", str(REPO / "Dockerfile")], check=False).returncode == 0
