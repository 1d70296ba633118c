"""The Dockerfile calls the project's scripts and nothing else, and lints clean."""
import re
import shutil

import pytest

from conftest import REPO, run

DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_multi_stage_debian12_non_root_with_volumes_and_the_driver():
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", DOCKERFILE, re.M)
    assert stages == [("debian:12", "build"), ("debian:12", "runtime")]
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    assert re.search(r"^USER 1000", runtime, re.M)
    assert 'VOLUME ["/runs", "/data"]' in runtime
    assert 'ENTRYPOINT ["/opt/hintkd/app/run_stages.sh"]' in runtime
    assert "COPY --from=build /opt/hintkd/cache" in runtime


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
