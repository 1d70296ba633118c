"""engine/install_caffe.sh: idempotent, and its prefix follows the recipe."""
import shutil

from conftest import REPO, run
from hintkd import engine

INSTALL = str(REPO / "engine" / "install_caffe.sh")


def test_second_call_finds_the_build_and_changes_nothing():
    prefix = engine.caffe_prefix()
    before = {p.name: p.stat().st_mtime_ns for p in prefix.iterdir()}
    result = run(["bash", INSTALL])
    assert result.stdout.strip() == str(prefix)
    assert "building" not in result.stderr and "installing" not in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in prefix.iterdir()} == before
    assert run(["bash", INSTALL, "--check"], check=False).returncode == 0


def test_the_build_runs_and_pycaffe_imports_without_path_variables(caffe):
    prefix = engine.caffe_prefix()
    version = run([str(prefix / "bin" / "caffe"), "--version"], check=False)
    assert "1.0.0" in version.stdout + version.stderr
    assert "Python" in caffe.layer_type_list()  # Python layers are built in


def test_an_empty_cache_has_no_build_and_the_prefix_follows_the_recipe(tmp_path):
    check = run(["bash", INSTALL, "--check"], check=False, env={"HINTKD_CACHE": str(tmp_path / "cache")})
    assert check.returncode == 1
    copy = tmp_path / "engine"
    shutil.copytree(REPO / "engine", copy)
    same = run(["bash", str(copy / "install_caffe.sh"), "--print-prefix"]).stdout.strip()
    assert same == str(engine.caffe_prefix())
    with open(copy / "Makefile.config", "a") as f:
        f.write("# a changed recipe\n")
    changed = run(["bash", str(copy / "install_caffe.sh"), "--print-prefix"]).stdout.strip()
    assert changed != same and changed.startswith(str(engine.caffe_prefix().parent))
