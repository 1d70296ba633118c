"""Collects a run's stage summaries into one JSON and says where everything is.

    python3 -m hintkd.summary STAGE_DIR...     (run_stages.sh calls it last)

A run of a teacher-student method gets OUT/DATASET/<run>/run.json: the method,
its stages in training order with their final test results and final losses,
and the final test accuracy of each net with their mean and standard deviation.
A net trained alone is its own run: its summary.json says it all. Beside either
goes training.png/.pdf, the run's training curves (hintkd.curves).
"""
import json
import statistics
import sys
from pathlib import Path

from hintkd import curves
from hintkd.atomic import write_json
from hintkd.train import SUMMARY

RUN_SUMMARY = "run.json"


def run_summary(stage_dirs):
    """Writes the run summary (when the run has several stages); returns its path."""
    folders = [Path(d).resolve() for d in stage_dirs]
    stages = [json.loads((folder / SUMMARY).read_text()) for folder in folders]
    if len(folders) == 1:
        return folders[0] / SUMMARY
    nets = [s for s in stages if "net" in s]
    accuracies = [s["final_test"]["accuracy"] for s in nets]
    last = stages[-1]
    summary = {
        "method": last["method"], "dataset": last["dataset"], "scale": last["scale"],
        "stages": [{"label": s["label"], "folder": str(folder), "iterations": s["iterations"],
                    "final_test": s["final_test"], "final_losses": s["final_losses"],
                    "loss_weights": s.get("loss_weights")}
                   for s, folder in zip(stages, folders)],
        "nets": {"final_accuracy": accuracies,
                 "mean": statistics.mean(accuracies) if accuracies else None,
                 "std": statistics.stdev(accuracies) if len(accuracies) > 1 else None},
    }
    path = folders[-1].parent / RUN_SUMMARY
    write_json(path, summary)
    return path


def main(argv=None):
    stage_dirs = (argv if argv is not None else sys.argv[1:])
    print("summaries:")
    for folder in stage_dirs:
        print(f"  {Path(folder).resolve() / SUMMARY}")
    path = run_summary(stage_dirs)
    print(f"run summary: {path}")
    figure = curves.training_figure(stage_dirs, path.parent / "training")
    print(f"training curves: {', '.join(map(str, figure))}")
    nets = json.loads(path.read_text()).get("nets", {})
    if nets.get("final_accuracy"):
        print(f"final test accuracy of Nets 1-{len(nets['final_accuracy'])}: "
              f"{', '.join(f'{100 * a:.2f}%' for a in nets['final_accuracy'])} (mean {100 * nets['mean']:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
