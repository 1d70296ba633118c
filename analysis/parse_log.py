#!/usr/bin/python3
"""Reads a Caffe training log (plain or .gz, any Caffe version) into tidy records.

    analysis/parse_log.py LOG [LOG...] [--json] [--out-dir DIR] [--no-csv]

For each log it writes the two CSV files of Caffe's own tools/extra/parse_log.py,
<log>.train and <log>.test (columns NumIters, Seconds, LearningRate, then every
output by the name Caffe printed), and prints the number of test points and the
final and best test accuracy. --json prints every train and test record instead.
A damaged log gives warnings on stderr and the part that could be read.
"""
import argparse
import bisect
import csv
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hintkd import caffelog  # noqa: E402
from hintkd.atomic import write_text  # noqa: E402

RESERVED = ("iteration", "seconds", "lr")


def learning_rates(parsed):
    """A function iteration -> the learning rate in force then (None before the first)."""
    known = sorted((r["iteration"], r["lr"]) for r in parsed.train_records() if "lr" in r)
    iterations = [it for it, _ in known]

    def at(iteration):
        i = bisect.bisect_left(iterations, iteration)  # as Caffe's parse_log.py: the rate last printed before
        return known[i - 1][1] if i else None
    return at


def caffe_csv(records, lr_at):
    """Caffe's parse_log.py layout: NumIters, Seconds, LearningRate, outputs in first-seen order."""
    names = []
    for r in records:
        names += [k for k in r if k not in RESERVED and k not in names]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["NumIters", "Seconds", "LearningRate"] + names)
    for r in records:
        lr = r.get("lr", lr_at(r["iteration"]))
        writer.writerow([r["iteration"], r["seconds"], "" if lr is None else lr] + [r.get(n, "") for n in names])
    return out.getvalue()


def log_report(path, parsed):
    tests = parsed.test_records()
    metric = caffelog.accuracy_name(tests)
    final, best = caffelog.final_and_best(tests, metric)
    return {"log": str(path), "done": parsed.done, "test_points": len(tests), "train_points": len(parsed.train),
            "accuracy_name": metric,
            "final": {"iteration": final["iteration"], "accuracy": final[metric]} if final else None,
            "best": {"iteration": best["iteration"], "accuracy": best[metric]} if best else None,
            "snapshots": [{"iteration": it, "path": p} for it, p in parsed.snapshots],
            "warnings": parsed.warnings}


def csv_paths(log, out_dir):
    base = Path(log).name
    base = base[:-3] if base.endswith(".gz") else base
    folder = Path(out_dir) if out_dir else Path(log).parent
    return folder / f"{base}.train", folder / f"{base}.test"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", metavar="LOG")
    ap.add_argument("--json", action="store_true", help="print the records and the summary as JSON")
    ap.add_argument("--out-dir", help="where the .train/.test CSVs go (default: beside each log)")
    ap.add_argument("--no-csv", action="store_true", help="write no CSV files")
    args = ap.parse_args(argv)
    status, results = 0, []
    for log in args.logs:
        if not Path(log).is_file():
            print(f"parse_log.py: error: no such log file: {log}", file=sys.stderr)
            status = 1
            continue
        parsed = caffelog.parse_file(log)
        report = log_report(log, parsed)
        for warning in parsed.warnings:
            print(f"parse_log.py: warning: {log}: {warning}", file=sys.stderr)
        if not parsed.train and not parsed.test:
            print(f"parse_log.py: warning: {log}: no training or test records (is it a Caffe log?)", file=sys.stderr)
        if not args.no_csv:
            lr_at = learning_rates(parsed)
            train_csv, test_csv = csv_paths(log, args.out_dir)
            try:
                train_csv.parent.mkdir(parents=True, exist_ok=True)
                write_text(train_csv, caffe_csv(parsed.train_records(), lr_at))
                write_text(test_csv, caffe_csv(parsed.test_records(), lr_at))
            except OSError as e:
                print(f"parse_log.py: error: cannot write the CSVs for {log}: {e} (try --out-dir)", file=sys.stderr)
                return 1
            report["csv"] = {"train": str(train_csv), "test": str(test_csv)}
        if args.json:
            results.append({**report, "train": parsed.train_records(), "test": parsed.test_records()})
        else:
            print(describe(report))
    if args.json:
        json.dump(results[0] if len(results) == 1 else results, sys.stdout, indent=1)
        print()
    return status


def describe(report):
    def point(p):
        return f"{p['accuracy']:.4f} at iteration {p['iteration']}" if p else "none"
    lines = [f"{report['log']}: {report['test_points']} test points, {report['train_points']} train points"
             f"{'' if report['done'] else ', not finished'}",
             f"  final {report['accuracy_name'] or 'accuracy'}: {point(report['final'])}",
             f"  best  {report['accuracy_name'] or 'accuracy'}: {point(report['best'])} (after iteration 0)"]
    if "csv" in report:
        lines.append(f"  wrote {report['csv']['train']} and {report['csv']['test']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
