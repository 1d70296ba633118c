"""The options of run_stages.sh, generate.py plan and reproduce, defined once.

run_stages.sh asks this module before it does anything else:

    python3 -m hintkd.options run DATASET TEACHER STUDENT METHOD [options]
    python3 -m hintkd.options reproduce TARGET [options]

Every argument is checked here with the standard library alone (a fresh machine
has nothing else yet), so a bad one stops the call before anything is
installed, prepared or written, with one line that names run_stages.sh and
says what to give instead. `run` prints the parsed values as shell assignments
for the driver; `reproduce` prints nothing.
"""
import argparse
import contextlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

from hintkd import engine, iterations, read_table

REPO = Path(__file__).resolve().parent.parent
PROG = "run_stages.sh"
SHORTCUTS = ("projection", "zero_pad")


def method_names():
    return list(read_table(REPO / "solvers" / "methods.json"))


def dataset_names():
    return list(read_table(REPO / "data_prep" / "datasets.json"))


def target_names():
    return list(read_table(REPO / "analysis" / "paper_results.json"))


def quick_scale():
    return json.loads((REPO / "solvers" / "schedules.json").read_text())["quick"]["scale"]


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line, naming the script the user typed, and
    checks that look at several options together."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.checks = []

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        for check in self.checks:
            check(self, parsed)
        return parsed

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


# --- value types: each says what it wants ------------------------------------

def depth(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a depth is a whole number like 14, got '{text}'") from None
    if value < 8 or (value - 2) % 6:
        raise argparse.ArgumentTypeError(f"depth {value} is not 6n+2 with n >= 1: use 8, 14, 20, 26, 32, ...")
    return value


def net(text):
    """A 6n+2 depth, or the path of a user's prototxt (a Path)."""
    if text.endswith(".prototxt") or os.sep in text:
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"no prototxt file '{text}'")
        return Path(text)
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a net is a depth like 14 or a .prototxt file, got '{text}'")
    return depth(text)


def existing_file(text):
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no file '{text}'")
    return text


def depth_pair(text):
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"--depths takes TEACHER,STUDENT like 14,8, got '{text}'")
    return tuple(depth(p) for p in parts)


def dataset(text):
    if text not in dataset_names():
        raise argparse.ArgumentTypeError(f"unknown dataset '{text}': use one of {', '.join(dataset_names())}")
    return text


def method(text):
    if text not in method_names():
        raise argparse.ArgumentTypeError(f"unknown method '{text}': use one of {', '.join(method_names())}")
    return text


def target(text):
    if text not in target_names():
        raise argparse.ArgumentTypeError(f"unknown target '{text}': use one of {', '.join(target_names())}")
    return text


def bounded(kind, holds, words):
    """An argparse type: a `kind` number for which holds(value) is true ("above 0")."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} number, got '{text}'") from None
        if not holds(value):  # written so that NaN fails too
            raise argparse.ArgumentTypeError(f"expected a number {words}, got '{text}'")
        return value
    parse.__name__ = kind.__name__
    return parse


def positive(kind):
    return bounded(kind, lambda value: value > 0, "above 0")


def non_negative(kind):
    return bounded(kind, lambda value: value >= 0, "of 0 or more")


def folder_or_new(text):
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a file: give a folder (made if missing)")
    return text


def existing_path(text):
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"'{text}' does not exist: give the dataset archive or folder on disk")
    return text


def gpus(text):
    """'0' or '0,1,...': the devices; more than one is for --jobs K (whole stages spread over them)."""
    try:
        return [int(d) for d in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpu takes a device number like 0 (or 0,1 with --jobs), "
                                         f"got '{text}'") from None


def widths(text):
    try:
        values = tuple(int(w) for w in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"widths are three numbers like 16,32,64, got '{text}'")
    return values


def numbers(kind):
    def parse(text):
        try:
            return [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got '{text}'") from None
    return parse


def duration(text):
    """'15s', '90m', '2h30m', '1h5m10s' -> seconds."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    seconds = 3600 * int(match[1] or 0) + 60 * int(match[2] or 0) + int(match[3] or 0) if match else 0
    if not seconds:
        raise argparse.ArgumentTypeError(f"expected a duration like 15s, 90m or 2h30m, got '{text}'")
    return seconds


def slurm_time(seconds):
    """Seconds as sbatch --time reads them: hours:minutes:seconds."""
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def hints(text):
    """'stage1,stage2:stage2,block4:block2' -> [(teacher point, student point), ...]"""
    pairs = []
    for item in text.split(","):
        teacher, _, student = item.strip().partition(":")
        pairs.append((teacher, student or teacher))
    return pairs


# --- the option sets -------------------------------------------------------------

def add_run_options(parser):
    """One run's method and settings: what generate.py plan and run_stages.sh share."""
    parser.add_argument("dataset", type=dataset)
    parser.add_argument("teacher", type=net, help="a 6n+2 depth, or a teacher prototxt (deploy or train_val)")
    parser.add_argument("student", type=net, help="a 6n+2 depth, or a student prototxt (train_val: its fillers)")
    parser.add_argument("method", type=method)
    parser.add_argument("--teacher-widths", type=widths)
    parser.add_argument("--student-widths", type=widths)
    parser.add_argument("--shortcut", choices=SHORTCUTS, default="projection")
    parser.add_argument("--seed", type=int, default=1, help="seed of Stage 1 and Net 1; Net k uses seed + k - 1")
    parser.add_argument("--nets", type=positive(int), default=3, help="Stage 2 runs once per net (paper: Nets 1-3)")
    parser.add_argument("--hints", type=hints,
                        help="hint/guided points, T[:S] each: stage1..3, middle, last, blockK of a ResNet, a blob "
                             "name of a prototxt (N = their count)")
    parser.add_argument("--hint-weights", type=numbers(float), help="a_i of eq. 7 (default: equal)")
    parser.add_argument("--step-iterations", type=numbers(int), help="iterations of each layer-wise step")
    parser.add_argument("--tau", type=positive(float), help="softening factor (default 3, sec. 2.1)")
    parser.add_argument("--kd-lambda", type=non_negative(float),
                        help="weight of the KD term, 0 or more (default 5, sec. 3.1)")
    parser.add_argument("--tau-squared", action="store_const", const=True,
                        help="multiply the KD term by tau^2 (Hinton et al.; not in the paper)")
    parser.add_argument("--regressor", action="store_true",
                        help="a 1x1 convolutional regressor on each guided layer to the teacher's width (Tables 5-6)")
    own = parser.add_argument_group("your own nets (README 'Your own teacher and student')")
    own.add_argument("--teacher-weights", type=existing_file, metavar="FILE.caffemodel",
                     help="a trained teacher: its accuracy is measured, it is not trained")
    own.add_argument("--solver", type=existing_file, metavar="FILE.prototxt",
                     help="your solver for the stages that train with cross-entropy (scaled by --scale); "
                          "default: the paper's schedule for the dataset")
    own.add_argument("--hint-lr", type=positive(float), metavar="LR",
                     help="the learning rate of hint stages (default: the paper's 1e-4; with --solver, in "
                          "proportion to its base_lr); a net without BatchNorm on 0-255 pixels needs far less")
    own.add_argument("--teacher-logits", metavar="BLOB", help="the teacher prototxt's logits (default: the top "
                                                               "of its last InnerProduct)")
    own.add_argument("--student-logits", metavar="BLOB", help="the student prototxt's logits (as --teacher-logits)")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--scale", type=positive(float), default=1.0,
                       help="multiply every iteration count of the paper by F")
    scale.add_argument("--quick", action="store_true", help="a smoke run: --scale from solvers/schedules.json")
    parser.add_argument("--scale-anyway", action="store_true", help=SCALE_ANYWAY_HELP)


def add_run_arguments(parser):
    """generate.py plan's arguments: a run's options and where its data and stages are."""
    add_run_options(parser)
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--out", required=True, help="where runs go")


def add_device_options(parser):
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--cpu", action="store_true", help="train on the CPU (the default)")
    device.add_argument("--gpu", type=gpus, metavar="N[,M...]",
                        help="train on GPU N; with --jobs K, the stages spread over GPUs N,M,...")


def add_execution_options(parser):
    """How the unfinished stages run: here, K at a time; as Slurm jobs; or not at all."""
    how = parser.add_argument_group("how the stages run (one graph of stages: hintkd/graph.py)")
    slurm = parser.add_argument_group("Slurm jobs (with --slurm)")
    local = [
        how.add_argument("--jobs", type=positive(int), default=1,
                         help="stages trained at once on this machine, each with cores / K OpenMP threads "
                              "(default 1)"),
        how.add_argument("--status", action="store_true",
                         help="each stage's state, iterations done and time left; trains nothing"),
        how.add_argument("--time-limit", type=duration, metavar="DURATION",
                         help="stop cleanly within DURATION (15s, 90m, 2h30m) of the stages' start: each running "
                              "stage snapshots and the call exits 75, the same command resumes; with --status, what "
                              "finishes within it; with --slurm, each job's --time"),
        how.add_argument("--slurm", action="store_true",
                         help="submit the unfinished stages as Slurm jobs whose dependencies mirror the graph, "
                              "and a last job that builds the results"),
    ]
    parser.slurm_actions = [
        slurm.add_argument("--partition", help="sbatch --partition"),
        slurm.add_argument("--time", help="sbatch --time, a job's time limit (e.g. 4:00:00); a stage stopped by "
                                          "it resumes in its requeued job"),
        slurm.add_argument("--gres", help="sbatch --gres per job, e.g. gpu:1 (with --gpu 0)"),
        slurm.add_argument("--cpus-per-task", type=positive(int),
                           help="sbatch --cpus-per-task; a job's OpenMP threads"),
        slurm.add_argument("--array-throttle", type=positive(int),
                           help="at most N of a run's Stage 2 nets (one job array) at once"),
        slurm.add_argument("--sbatch-args", default="", help="more sbatch arguments, as one quoted string"),
        slurm.add_argument("--job-prefix", default="",
                           help="put before each job's commands, e.g. 'apptainer exec --nv hintkd.sif'"),
    ]
    parser.execution_actions = local + parser.slurm_actions
    parser.checks.append(check_execution)


def without_execution(argv):
    """argv with the options of add_execution_options taken out: the same run, done here."""
    takes = {name: 0 if action.nargs == 0 else 1
             for action in run_parser().execution_actions for name in action.option_strings}
    kept, rest = [], list(argv)
    while rest:
        token = rest.pop(0)
        name = token.split("=", 1)[0]
        if name in takes:
            if "=" not in token:
                del rest[:takes[name]]
            continue
        kept.append(token)
    return kept


def check_execution(parser, args):
    if args.gpu and len(args.gpu) > 1 and (args.jobs == 1 or args.slurm):
        parser.error(f"--gpu {','.join(map(str, args.gpu))}: multi-GPU data parallel is not available in this "
                     "Caffe (no NCCL; README 'On a GPU'): give one device, or --jobs K to train K stages at once "
                     "spread over these GPUs (with --slurm: --gpu 0 and --gres gpu:1)")
    if args.status and (args.slurm or args.jobs > 1):
        parser.error("--status trains nothing: give it without --slurm and --jobs")
    if args.slurm and args.time_limit and args.time:
        parser.error("--time-limit sets each job's --time under --slurm: give one of the two")
    if args.slurm and args.jobs > 1:
        parser.error("--jobs is for this machine; with --slurm the cluster runs the stages (see --array-throttle)")
    given = [action.option_strings[0] for action in parser.slurm_actions
             if getattr(args, action.dest) not in (None, "")]
    if given and not args.slurm:
        parser.error(f"{given[0]} is an option of --slurm")


def add_data_options(parser):
    parser.add_argument("--source", type=existing_path, help="dataset archive or folder on disk (default: download)")
    parser.add_argument("--no-md5", action="store_true",
                        help="accept a --source that is not the official file (a subset or a re-encoding)")


def add_output_options(parser, what):
    parser.add_argument("--out", default=os.environ.get("HINTKD_OUT", "runs"),
                        help=f"where {what} go (default: $HINTKD_OUT or ./runs)")
    parser.add_argument("--keep", metavar="DIR", type=folder_or_new,
                        help="keep each stage as it finishes (or stops) in DIR, compactly, for a git repository; "
                             "a run given the same DIR on another machine trains only what DIR lacks "
                             "(docs/running.md)")


def run_parser():
    """run_stages.sh DATASET TEACHER STUDENT METHOD [options]: each net a depth or a prototxt"""
    parser = OneLineParser(prog=PROG)
    add_run_options(parser)
    add_device_options(parser)
    add_data_options(parser)
    add_output_options(parser, "data and runs")
    add_execution_options(parser)
    return parser


def reproduce_parser(prog=f"{PROG} reproduce", description=None):
    parser = OneLineParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=target, help=", ".join(target_names()))
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs, what is left and its time; train nothing")
    parser.add_argument("--report-only", action="store_true", help="build the table or figure from what is finished")
    parser.add_argument("--dataset", type=dataset, help="another dataset than the paper's (e.g. digits); the paper's "
                                                        "numbers stay beside ours, labelled as another setting")
    parser.add_argument("--depths", type=depth_pair, help="TEACHER,STUDENT depths instead of the paper's")
    add_output_options(parser, "data, runs and reports")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--scale", type=positive(float), default=1.0,
                       help="multiply every iteration count of the paper by F")
    scale.add_argument("--quick", action="store_true", help="--scale from solvers/schedules.json (a smoke run)")
    parser.add_argument("--scale-anyway", action="store_true", help=SCALE_ANYWAY_HELP)
    parser.add_argument("--nets", type=positive(int), default=3, help="Stage 2 nets per method (paper: 3)")
    parser.add_argument("--seed", type=int, default=1)
    add_data_options(parser)
    add_device_options(parser)
    add_execution_options(parser)
    return parser


SCALE_ANYWAY_HELP = "run a --scale that puts two learning-rate steps on one iteration (refused otherwise)"


def check_scale(parser, args, stepvalues, max_iter, what):
    """A scale that merges a schedule's learning-rate steps is refused before anything runs,
    or with --scale-anyway said once."""
    scale = quick_scale() if args.quick else args.scale
    problem = iterations.scale_problem(stepvalues, max_iter, scale, what)
    if problem and args.scale_anyway:
        print(f"{parser.prog}: warning: {problem.split(';')[0]}; running it so (--scale-anyway)", file=sys.stderr)
    elif problem:
        parser.error(problem)


def check_paper_scale(parser, args, dataset):
    """check_scale for the paper's schedule of the dataset (a --solver of the user's: hintkd.precheck)."""
    if not getattr(args, "solver", None):
        paper = read_table(REPO / "solvers" / "schedules.json")["scratch"][dataset]
        check_scale(parser, args, paper["stepvalue"], paper["max_iter"], f"the {dataset} schedule")


# In an image the user is 1000 unless run with --user; a host folder mounted on /runs keeps its owner.
AS_YOURSELF = 'or in an image run it with --user "$(id -u):$(id -g)"'


def check_folders(parser, args):
    """An output or kept folder this user cannot write, or a source it cannot read, refused in one
    line before anything is installed or written (as a run in an image would meet it)."""
    if getattr(args, "status", False) or getattr(args, "dry_run", False):
        return
    for option, folder in (("--out", args.out), ("--keep", args.keep)):
        if folder:
            path = Path(folder).resolve()
            # os.path.exists: False, not PermissionError, below a folder this user cannot enter
            existing = next(p for p in (path, *path.parents) if os.path.exists(p))
            if not os.access(existing, os.W_OK | os.X_OK):
                parser.error(f"{option} {folder}: {existing} is not writable by user {os.getuid()}: "
                             f"give a folder this user can write, chown it, {AS_YOURSELF}")
    source = getattr(args, "source", None)
    if source and not os.access(source, os.R_OK | (os.X_OK if Path(source).is_dir() else 0)):
        parser.error(f"--source {source}: not readable by user {os.getuid()}: make it readable (chmod a+rX), "
                     + AS_YOURSELF)


def check_source(parser, args):
    source_format = read_table(REPO / "data_prep" / "datasets.json")[args.dataset]["official"]["format"]
    if args.source and source_format == "sklearn-digits":
        parser.error(f"{args.dataset} is bundled with scikit-learn and takes no --source")
    if not args.source and source_format == "image-folder":
        parser.error(f"{args.dataset} needs --source PATH (an image folder: train/<class>/*, test/<class>/*)")


def engine_variant(args):
    """HINTKD_CAFFE_VARIANT for the run's stages (engine.variant_for)."""
    return engine.variant_for(args.gpu, os.environ.get("HINTKD_CAFFE_VARIANT", ""))


def shell_assignments(argv):
    """Checks run_stages.sh's arguments; returns the bash assignments its driver needs."""
    parser = run_parser()
    args = parser.parse_args(argv)
    check_source(parser, args)
    check_folders(parser, args)
    check_paper_scale(parser, args, args.dataset)
    values = {"dataset": args.dataset, "out": str(Path(args.out).resolve()),
              "source": str(Path(args.source).resolve()) if args.source else "", "no_md5": "yes" if args.no_md5 else "",
              "status": "yes" if args.status else "", "variant": engine_variant(args)}
    return "\n".join(f"{k}={shlex.quote(str(v))}" for k, v in values.items())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if "-h" in rest or "--help" in rest:  # the help goes to the terminal, never into the driver's eval
        with contextlib.redirect_stdout(sys.stderr):
            (run_parser() if command == "run" else reproduce_parser()).parse_args(rest)
    if command == "run":
        if len(rest) < 4 or any(a.startswith("-") for a in rest[:4]):
            print(f"{PROG}: error: expected DATASET TEACHER STUDENT METHOD first, e.g. "
                  f"'{PROG} digits 14 8 proposed' (see {PROG} --help)", file=sys.stderr)
            return 2
        print(shell_assignments(rest))
    elif command == "reproduce":
        parser = reproduce_parser()
        args = parser.parse_args(rest)
        check_folders(parser, args)
        dataset = args.dataset or read_table(REPO / "analysis" / "paper_results.json")[args.target]["dataset"]
        check_paper_scale(parser, args, dataset)
        print(f"status={'yes' if args.status else ''}\nvariant={engine_variant(args)}")
    else:
        print("usage: python3 -m hintkd.options run|reproduce ARGS...", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
