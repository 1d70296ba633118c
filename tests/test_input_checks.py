"""Every wrong input refused before anything is written: the user's nets, weights,
solver and hint names are read and checked before the data is prepared or downloaded
(hintkd.precheck), and bounds on lambda and scale. Each case runs run_stages.sh as a
user does, into a fresh output folder, and asserts that the folder was never made."""
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from conftest import CIFAR10_JPEG, REPO, run

RUN_STAGES = str(REPO / "run_stages.sh")
NETS = REPO / "tests" / "nets" / "bvlc_cifar10"
FULL, QUICK = NETS / "cifar10_full_train_test.prototxt", NETS / "cifar10_quick_train_test.prototxt"
FULL_DEPLOY = NETS / "cifar10_full.prototxt"
SOLVER = NETS / "cifar10_quick_5000_solver.prototxt"
# A download would go through a closed port and fail at once, naming the download, so a check
# that ran after data preparation shows as another message instead of a long wait.
NOBODY = 65534
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


def refused(tmp_path, args):
    """run_stages.sh ARGS --out FRESH: its stderr, after asserting it failed and wrote nothing."""
    out = tmp_path / "fresh"
    result = run([RUN_STAGES, *map(str, args), "--out", str(out)], check=False, env=NO_NETWORK)
    assert result.returncode != 0, result.stdout
    assert not out.exists(), f"written before the check: {sorted(p.name for p in out.rglob('*'))}"
    assert "download" not in result.stderr.lower(), result.stderr
    return result.stderr


def cifar10(*args):
    return ["cifar10", *args, "--source", CIFAR10_JPEG]


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory, caffe):
    """Weights of BVLC's cifar10_full as Caffe saves them (random, untrained: only their form matters)."""
    path = tmp_path_factory.mktemp("weights") / "full.caffemodel"
    caffe.Net(str(FULL_DEPLOY), caffe.TEST).save(str(path))
    return path


def with_text(tmp_path, name, source, old, new):
    path = tmp_path / name
    text = source.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_hint_blob_the_teacher_lacks(tmp_path):
    stderr = refused(tmp_path, cifar10(FULL, QUICK, "hint-kd", "--hints", "nosuch:pool1", "--solver", SOLVER))
    assert "no blob 'nosuch'" in stderr and "cifar10_full_train_test.prototxt" in stderr, stderr


def test_truncated_teacher_weights(tmp_path, teacher_weights):
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(teacher_weights.read_bytes()[:teacher_weights.stat().st_size // 2])
    stderr = refused(tmp_path, cifar10(FULL_DEPLOY, QUICK, "kd", "--teacher-weights", cut, "--solver", SOLVER))
    assert f"--teacher-weights: cannot read weights {cut}" in stderr, stderr


def test_teacher_weights_of_another_net(tmp_path, teacher_weights):
    quick_deploy = NETS / "cifar10_quick.prototxt"
    stderr = refused(tmp_path, cifar10(quick_deploy, QUICK, "kd", "--teacher-weights", teacher_weights,
                                       "--solver", SOLVER))
    assert (f"--teacher-weights: layer 'ip1': {teacher_weights} holds shapes [(10, 1024), (10,)], the prototxt "
            "needs [(64, 1024), (64,)]") in stderr, stderr


def test_a_solver_with_an_unknown_field(tmp_path):
    solver = with_text(tmp_path, "solver.prototxt", SOLVER, "max_iter:", "no_such_field: 1\nmax_iter:")
    stderr = refused(tmp_path, cifar10(FULL, QUICK, "kd", "--solver", solver))
    assert f"--solver {solver}: a SolverParameter does not parse" in stderr and "no_such_field" in stderr, stderr


def test_a_teacher_prototxt_that_does_not_parse_without_a_source(tmp_path):
    """Without --source the data would be downloaded first: the broken prototxt is named instead."""
    broken = with_text(tmp_path, "broken.prototxt", FULL, "}", "")
    stderr = refused(tmp_path, ["cifar10", broken, QUICK, "kd", "--solver", SOLVER])
    assert f"the teacher: {broken}: not a Caffe prototxt" in stderr, stderr


def test_a_teacher_with_no_data_input(tmp_path):
    text = FULL_DEPLOY.read_text()
    start = text.index("layer {")
    no_input = tmp_path / "no_input.prototxt"
    no_input.write_text(text[:start] + text[text.index("layer {", start + 1):])
    stderr = refused(tmp_path, cifar10(no_input, QUICK, "kd", "--solver", SOLVER))
    assert "no_input.prototxt: 0 data inputs (none)" in stderr, stderr


def test_a_broken_teacher_with_an_image_folder(tmp_path):
    """A dataset whose image size comes from the data: one image of each class is read to check the nets."""
    broken = with_text(tmp_path, "broken.prototxt", FULL, "}", "")
    stderr = refused(tmp_path, ["folder", broken, QUICK, "kd", "--solver", SOLVER, "--source", CIFAR10_JPEG])
    assert "not a Caffe prototxt" in stderr, stderr


@pytest.mark.parametrize("args, message", [
    (["digits", "14", "8", "kd", "--kd-lambda", "-1"], "--kd-lambda: expected a number of 0 or more, got '-1'"),
    (["digits", "14", "8", "kd", "--kd-lambda", "nan"], "--kd-lambda: expected a number of 0 or more, got 'nan'"),
    (["digits", "14", "8", "kd", "--tau", "nan"], "--tau: expected a number above 0, got 'nan'"),
    (["digits", "14", "8", "student", "--scale", "1e-9"],
     "--scale 1e-09 leaves the digits schedule (learning-rate steps at 600, 900, end 1200) at steps 1, 1, end 1: "
     "two of them on one iteration; use --scale 0.0034 or more"),
    (["cifar10", "26", "14", "proposed", "--scale", "5e-5"], "use --scale 6.3e-05 or more"),
])
def test_bounds(tmp_path, args, message):
    assert message in refused(tmp_path, args)


def test_the_smallest_scale_named_is_accepted(tmp_path):
    out = tmp_path / "out"
    result = run([RUN_STAGES, "digits", "14", "8", "student", "--scale", "0.0034", "--status", "--out", str(out)])
    assert "warning" not in result.stderr, result.stderr


def test_a_users_solver_whose_steps_meet_under_the_scale(tmp_path):
    """BVLC's solver steps at 4,000 of 5,000: at 1/10,000 both fall on iteration 1."""
    stderr = refused(tmp_path, cifar10(FULL, QUICK, "student", "--solver", SOLVER, "--scale", "0.0001"))
    assert f"--scale 0.0001 leaves --solver {SOLVER}" in stderr and "use --scale 0.001 or more" in stderr, stderr


def test_scale_anyway_runs_and_says_so_once(tmp_path):
    result = run([RUN_STAGES, "digits", "14", "8", "student", "--scale", "0.002", "--scale-anyway",
                  "--out", str(tmp_path / "out")])
    assert result.stderr.count("warning: --scale 0.002 leaves the digits schedule") == 1, result.stderr
    assert "iter 2/2" in result.stdout, result.stdout


def test_an_image_folder_run_is_checked_and_trains(tmp_path):
    result = run([RUN_STAGES, "folder", "14", "8", "student", "--scale", "0.0005", "--source", CIFAR10_JPEG,
                  "--out", str(tmp_path / "out")])
    assert "done: test accuracy" in result.stdout, result.stdout


@pytest.fixture(params=["readable", "closed"])
def foreign_folder(request):
    """A folder this test's command cannot write (readable, or not even to be entered), and the
    command prefix that runs as such a user: as root, a root-owned folder and the user nobody (as
    a host folder meets an image's user 1000); otherwise one of the user's own folders without
    write permission."""
    folder = Path(tempfile.mkdtemp(prefix="hintkd-foreign-"))
    if os.getuid() == 0:
        folder.chmod({"readable": 0o755, "closed": 0o700}[request.param])
        unreachable = [p for p in (REPO, *REPO.parents) if not p.stat().st_mode & stat.S_IXOTH]
        if unreachable:
            pytest.skip(f"the user nobody cannot reach the clone ({unreachable[0]} is not o+x)")
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    else:
        folder.chmod({"readable": 0o555, "closed": 0o000}[request.param])
        prefix = []
    yield folder, prefix
    folder.chmod(0o755)
    shutil.rmtree(folder)


@pytest.mark.parametrize("command", [["digits", "14", "8", "proposed"],
                                     ["reproduce", "table3", "--dataset", "digits", "--quick"]])
def test_an_output_folder_this_user_cannot_write(foreign_folder, command):
    folder, prefix = foreign_folder
    result = run([*prefix, RUN_STAGES, *command, "--out", str(folder / "runs")], check=False)
    (line,) = result.stderr.strip().splitlines()  # one line, before anything is installed or written
    assert result.returncode == 2 and f"--out {folder / 'runs'}: {folder} is not writable by user" in line, line
    assert '--user "$(id -u):$(id -g)"' in line and not (folder / "runs").exists()


def test_steps_a_users_solver_itself_puts_together_are_not_blamed_on_the_scale():
    """stepvalue 100 twice: the solver's own choice; the check neither refuses it nor fails on it."""
    from hintkd import iterations
    assert iterations.scale_problem([100, 100], 200, 0.001, "--solver s") is None
    assert "use --scale 0.0034 or more" in iterations.scale_problem([600, 900], 1200, 0.001, "the digits schedule")
