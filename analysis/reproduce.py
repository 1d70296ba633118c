#!/usr/bin/python3
"""Reproduces one table or figure of the paper: runs what is not finished, then builds it.

    ./run_stages.sh reproduce TARGET [options]       (or analysis/reproduce.py TARGET ...)
    ./run_stages.sh reproduce table1 --dry-run       the runs, which are done, what is left
    ./run_stages.sh reproduce table3 --dataset digits --quick

TARGET: table1..table6, figure4, figure5, figure7..figure10 (analysis/paper_results.json).
Files go to OUT/reports/TARGET-DATASET-resnetTtoS[-scaleF]/: table.md, table.csv,
figure.png and figure.pdf (a table drawn too: each net a point, each row's mean and
spread), and table.tex for tables.
Runs at different scales live in different folders and never meet in one table.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hintkd import engine  # noqa: E402

engine.use_system_python()

from hintkd import estimate, graph, netgen, options, plan, report, stagestate, train  # noqa: E402


def dry_run(study, source=None, time_limit=None, keep_dir=None):
    """Prints every run with its stages' progress (with keep_dir, its kept stages count), the
    time left on this machine and where the data comes from; returns the iterations still to go."""
    print(f"{study.name}: {study.spec['title']}")
    print(f"  {study.describe()}; runs under {study.out}")
    print(f"  data: {estimate.data_needs(study.dataset, study.out / 'data' / study.dataset, source)}")
    estimator, left_of = estimate.Estimator(), {}  # stage folder -> (iterations, seconds) left
    planners = {method: plan.planned(study.run_options(method), write=False) for method in study.methods()}
    progress = {method: plan.progress_of(planner, keep_dir) for method, planner in planners.items()}
    for stages in progress.values():  # finished stages first teach the estimator this machine's speed
        for folder, _, _ in stages:
            estimator.learn(folder)
    for method, planner in planners.items():
        stages = progress[method]
        done = sum(d for _, d, _ in stages)
        total = sum(t for _, _, t in stages)
        state = "done" if done == total else ("started" if done else "to do")
        folder = stages[0][0] if len(stages) == 1 else stages[-1][0].parent
        for stage, d, t in stages:
            if stage not in left_of:
                per_iter = estimator.seconds_per_iter(planner, stage)[0] if d < t else 0
                left_of[stage] = (t - d, estimate.stage_seconds(planner, stage, d, t, per_iter))
        left = sum(left_of[stage][1] for stage, _, _ in stages)  # its shared stages (a teacher) included
        print(f"  {method:<13} {state:<8} {done:>8}/{total:<8} iterations  {estimate.hms(left):>9} left  {folder}")
    to_go = sum(iterations for iterations, _ in left_of.values())
    seconds = sum(seconds for _, seconds in left_of.values())
    print(f"  iterations still to go: {to_go} (a stage shared by several runs, such as the teacher, counted once); "
          f"about {estimate.hms(seconds)} on this machine (speeds measured here: finished stages, else a short "
          "timing of each net)")
    warning = estimate.busy_warning(estimator)
    if warning:
        print(f"  {warning}")
    if time_limit:
        labels = {stage: planner.labels[stage] for planner in planners.values() for stage in planner.stages}
        done_of = {stage: (d, t) for stages in progress.values() for stage, d, t in stages}
        print("  " + estimate.within(time_limit, [(labels[stage], *done_of[stage], seconds)
                                                  for stage, (_, seconds) in left_of.items()]))
    return to_go


def prepare(study, source, no_md5=False):
    data = study.out / "data" / study.dataset
    command = [engine.SYSTEM_PYTHON, str(ROOT / "data_prep" / "prepare.py"), study.dataset, "--out", str(data)]
    command += (["--source", source] if source else []) + (["--no-md5"] if no_md5 else [])
    return subprocess.run(command).returncode == 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = options.reproduce_parser(description=__doc__).parse_args(argv)
    try:
        study = report.Study(args.target, Path(args.out), args.dataset, args.depths,
                             netgen.quick_scale() if args.quick else args.scale, args.nets, args.seed)
        if args.dry_run:
            dry_run(study, args.source, args.time_limit, args.keep)
            return 0
        graph.restore_kept(args)  # --keep DIR: what it has and --out lacks
        # Every stage process takes the same build: the CUDA one for a GPU.
        os.environ["HINTKD_CAFFE_VARIANT"] = options.engine_variant(args)
        if not args.report_only:
            if not (args.status or prepare(study, args.source, args.no_md5)):
                return 1
            runs = [study.run_options(method) for method in study.methods()]
            nodes = graph.build(runs, write=not args.status)
            unfinished = [opts for opts in runs if not graph.is_done(nodes, opts)]
            for opts in runs:
                if opts not in unfinished and not args.status:
                    print(f"[reproduce {study.name}] {opts.method}: finished earlier")
            final_command = [str(ROOT / "run_stages.sh"), "reproduce", *options.without_execution(argv)]
            # Each run's own comparison goes to its file; the table asked for is printed last.
            code = graph.execute(runs, nodes, args, final_command, finish_runs=unfinished, show_comparisons=False)
            if code or args.status or args.slurm:
                if code == train.STOPPED:
                    print(f"reproduce.py: {graph.stop_reason(args)}; run the same command again to resume from "
                          "the last snapshots", file=sys.stderr)
                elif code and not args.status:
                    print("reproduce.py: error: a stage did not finish (see above); the table is not built "
                          "(--report-only builds it from what is finished)", file=sys.stderr)
                return code
        if args.report_only:
            runs = [study.run_options(method) for method in study.methods()]
            if not any(stagestate.is_finished(f) for f in graph.build(runs, write=False)):
                print(f"reproduce.py: error: --report-only: nothing of {study.name} is finished in {study.out} "
                      f"(runs missing: {', '.join(opts.method for opts in runs)}); without --report-only "
                      "they are trained first", file=sys.stderr)
                return 1
        folder, text = report.build(study)
    except (report.ReportError, plan.PlanError, netgen.GenerateError) as e:
        print(f"reproduce.py: error: {e}", file=sys.stderr)
        return 1
    print(text)
    print(f"[reproduce {study.name}] files: {', '.join(sorted(p.name for p in folder.iterdir()))} in {folder}")
    if args.keep:  # the report beside the stages it was built from
        for path in folder.iterdir():
            shutil.copy2(path, Path(args.keep) / path.name)
        print(f"[reproduce {study.name}] kept with its stages in {args.keep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
