#!/usr/bin/python3
"""Finished runs side by side: a table of the methods for nets of your own (or any runs).

    analysis/compare_runs.py RUN_FOLDER... [--out FOLDER] [--title TEXT]

A RUN_FOLDER is what run_stages.sh printed as "run summary: FOLDER/run.json" (a
teacher-student method, Nets 1-K), or the folder of a net trained alone (the
`student` method). Rows keep the order given; each is tested against the next
with Welch's t-test, as the paper's tables are. With --out, table.md and
table.csv are written there.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hintkd import engine  # noqa: E402

engine.use_system_python()

from hintkd import report  # noqa: E402
from hintkd.atomic import write_text  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (run.json) or folders of nets trained alone")
    parser.add_argument("--out", help="write table.md and table.csv here")
    parser.add_argument("--title", default="Methods side by side", help="the table's heading")
    args = parser.parse_args(argv)
    try:
        rows, teachers = report.run_rows(args.runs)
    except report.ReportError as e:
        print(f"compare_runs.py: error: {e}", file=sys.stderr)
        return 1
    text = report.runs_markdown(rows, teachers, args.title)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "table.md", text)
        write_text(out / "table.csv", report.runs_csv(rows))
        print(f"wrote {out / 'table.md'}, {out / 'table.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
