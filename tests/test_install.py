"""engine/install_caffe.sh: idempotent, and its prefix follows the recipe."""
import json
import re
import shutil
import subprocess
from pathlib import Path

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


def print_prefix(*args, env=None, script=INSTALL):
    return run(["bash", str(script), *args, "--print-prefix"], env=env).stdout.strip()


def test_fast_and_stock_builds_live_apart_and_follow_their_own_recipes(tmp_path):
    fast, stock = print_prefix(), print_prefix("--stock")
    assert "-cpu-" in fast and "-stock-" in stock
    assert print_prefix(env={"HINTKD_CAFFE_VARIANT": "stock"}) == stock
    assert print_prefix(env={"HINTKD_PORTABLE": "1"}) not in (fast, stock)  # no -march=native
    copy = tmp_path / "engine"
    shutil.copytree(REPO / "engine", copy)
    with open(copy / "patches" / "fast" / "02-threaded-math.patch", "a") as f:
        f.write("\n")
    # A changed fast patch rebuilds the fast build only.
    assert print_prefix(script=copy / "install_caffe.sh") != fast
    assert print_prefix("--stock", script=copy / "install_caffe.sh") == stock
    bad = run(["bash", INSTALL, "--print-prefix"], env={"HINTKD_CAFFE_VARIANT": "fastest"}, check=False)
    assert bad.returncode == 2 and "cpu, stock or cuda" in bad.stderr


def test_the_fast_build_links_onednn_and_one_openmp_runtime_and_the_stock_build_neither():
    for variant, fast in (("--cpu", True), ("--stock", False)):
        prefix = Path(print_prefix(variant))
        info = json.loads((prefix / "BUILD-INFO.json").read_text())
        assert info["fast"] is fast
        (lib,) = prefix.glob("lib/libcaffe.so.*")
        linked = run(["ldd", str(lib)]).stdout
        assert ("libdnnl.so" in linked) is fast and ("libgomp.so" in linked) is fast, variant
        assert "libiomp" not in linked and "not found" not in linked


def test_build_progress_in_a_log_is_line_based_and_never_passes_its_total():
    """What install_caffe.sh prints while make runs, written to a pipe (as into a log file)."""
    make_output = "".join(f"CXX src/caffe/file{i}.cpp\nsome compiler noise\n" for i in range(25)) + "LD libcaffe.so\n"
    result = subprocess.run(["bash", INSTALL, "--progress-filter=20"], input=make_output, capture_output=True,
                            text=True, check=True)
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and 5 <= len(lines) <= 30
    for line in lines:
        done, total = map(int, re.search(r"(\d+)/(\d+) build steps", line).groups())
        assert done <= total
    assert lines[-1] == "[install_caffe] 26/26 build steps done"


def test_the_readme_test_command_says_why_a_test_is_skipped():
    """tests/run.sh asks pytest for the reason of every skip (-rs): a missing CUDA build, a missing tool."""
    result = run(["bash", "-x", str(REPO / "tests" / "run.sh"), "--collect-only", "-q", "tests/test_install.py"],
                 check=False)
    assert re.search(r"python3 -m pytest -p no:cacheprovider -rs ", result.stderr), result.stderr[-500:]


def test_fetch_source_prints_the_checked_pinned_source():
    path = Path(run(["bash", INSTALL, "--fetch-source"]).stdout.strip().splitlines()[-1])
    assert path.name == "brocolli-caffe-9.0.2.tar.gz"
    digest = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True).stdout.split()[0]
    assert digest == "c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a"


def test_the_onednn_choice_is_checked_and_only_3_2_takes_another_prefix(tmp_path):
    """HINTKD_ONEDNN: 2.6 is the default build itself, 3.2 a build of its own (its recipe adds
    oneDNN 3.2's pins and patches/onednn3), the builds without oneDNN ignore it."""
    fast = print_prefix()
    assert print_prefix(env={"HINTKD_ONEDNN": "2.6"}) == fast
    onednn3 = print_prefix(env={"HINTKD_ONEDNN": "3.2"})
    assert onednn3 != fast and "-cpu-" in onednn3
    assert print_prefix("--stock", env={"HINTKD_ONEDNN": "3.2"}) == print_prefix("--stock")
    copy = tmp_path / "engine"
    shutil.copytree(REPO / "engine", copy)
    with open(copy / "patches" / "onednn3" / "01-onednn-3-api.patch", "a") as f:
        f.write("\n")
    changed = {"HINTKD_ONEDNN": "3.2"}
    assert print_prefix(env=changed, script=copy / "install_caffe.sh") != onednn3
    assert print_prefix(script=copy / "install_caffe.sh") == fast
    bad = run(["bash", INSTALL, "--print-prefix"], env={"HINTKD_ONEDNN": "3"}, check=False)
    assert bad.returncode == 2 and "must be 2.6 (Debian's) or 3.2 (PyPI's), got '3'" in bad.stderr


def test_fetch_onednn3_checks_its_pins_and_leaves_nothing_when_one_fails(tmp_path):
    """--fetch-onednn3 downloads PyPI's oneDNN 3.2 wheels, checks each against its sha256 and
    keeps the headers and libdnnl.so.3; a wheel that is not the pinned one stops it, and the
    cache then holds no oneDNN for a build to pick up."""
    root = Path(run(["bash", INSTALL, "--fetch-onednn3"]).stdout.strip())
    assert (root / "include" / "oneapi" / "dnnl" / "dnnl.hpp").exists() and (root / "lib" / "libdnnl.so.3").exists()
    assert '#define DNNL_VERSION_MAJOR 3' in (root / "include" / "oneapi" / "dnnl" / "dnnl_version.h").read_text()
    copy = tmp_path / "engine"
    shutil.copytree(REPO / "engine", copy)
    script = copy / "install_caffe.sh"
    text = script.read_text()
    pin = re.search(r"onednn-devel-cpu-gomp=([0-9a-f]{64})", text).group(1)
    script.write_text(text.replace(pin, "0" * 64))
    cache = tmp_path / "cache"
    failed = run(["bash", str(script), "--fetch-onednn3"], env={"HINTKD_CACHE": str(cache)}, check=False)
    assert failed.returncode == 1 and "checksum mismatch" in failed.stderr and "0" * 64 in failed.stderr
    assert list(cache.iterdir()) == []


def test_a_handed_in_build_of_the_recipe_is_installed_after_its_smoke_test(tmp_path):
    """engine/prebuilt/<this recipe's prefix name> (what an image build is handed) is copied
    in and checked instead of compiled; one that fails its smoke test leaves nothing."""
    cache = {"HINTKD_CACHE": str(tmp_path / "cache")}
    name = Path(run(["bash", INSTALL, "--print-prefix"], env=cache).stdout.strip()).name
    handed = REPO / "engine" / "prebuilt" / name
    assert name == engine.caffe_prefix().name  # the same recipe, another cache
    try:
        shutil.copytree(engine.caffe_prefix(), handed, symlinks=True)
        (handed / "bin" / "caffe").unlink()  # broken: its smoke test fails
        broken = run(["bash", INSTALL], env=cache, check=False)
        assert broken.returncode != 0 and "building" not in broken.stderr
        assert not (tmp_path / "cache" / name).exists() and not list((tmp_path / "cache").glob(f"{name}.tmp.*"))
        shutil.copy2(engine.caffe_prefix() / "bin" / "caffe", handed / "bin" / "caffe")
        result = run(["bash", INSTALL], env=cache)
        assert "installing the build of this recipe found in" in result.stderr and "building" not in result.stderr
        assert result.stdout.strip() == str(tmp_path / "cache" / name)
        assert (tmp_path / "cache" / name / "BUILD-INFO.json").exists()
    finally:
        shutil.rmtree(handed, ignore_errors=True)
