"""A figure of a run's training: every stage one after another, read from its Caffe log.

Three panels share the iteration axis (each stage's iterations follow the previous
stage's; dotted lines and labels mark where a stage begins): the training losses,
each term by its name (cross_entropy, kd, hintN: unweighted, as Caffe prints them)
and total_loss, the weighted sum SGD minimizes; the test accuracy; the learning rate.
"""
import io
import json
from pathlib import Path

from hintkd import caffelog
from hintkd.atomic import write_bytes


def stage_curves(stage_dir):
    """(label, train records, test records) of one stage, from its summary and log."""
    stage_dir = Path(stage_dir)
    summary = json.loads((stage_dir / "summary.json").read_text())
    parsed = caffelog.parse_file(stage_dir / "caffe.log")
    return summary["label"], summary["iterations"], parsed.train_records(), parsed.test_records()


def training_figure(stage_dirs, path_base):
    """Draws the stages' curves; writes path_base.png and path_base.pdf; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [stage_curves(d) for d in stage_dirs]
    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(3, 1, sharex=True, figsize=(11, 8.5),
                                                 gridspec_kw={"height_ratios": [3, 2, 1.2]})
    colors, offset = {}, 0
    for i, (label, iterations, train, tests) in enumerate(stages):
        for ax in (loss_ax, acc_ax, lr_ax):
            ax.axvline(offset, color="0.6", ls=":", lw=1)
        # Labels alternate between two heights, so that short stages' labels do not overlap.
        loss_ax.text(offset, 1.01 + 0.09 * (i % 2), f" {label}", transform=loss_ax.get_xaxis_transform(),
                     rotation=20, fontsize=7, va="bottom", ha="left")
        terms = sorted({k for r in train for k in r} - {"iteration", "seconds", "lr", "total_loss"})
        for name in ["total_loss"] + terms:
            points = [(offset + r["iteration"], r[name]) for r in train if name in r and r[name] > 0]
            if not points:
                continue
            color = colors.setdefault(name, f"C{len(colors)}")
            known = name in loss_ax.get_legend_handles_labels()[1]
            loss_ax.plot(*zip(*points), color=color, lw=1.2 if name == "total_loss" else 1,
                         ls="--" if name == "total_loss" else "-", label=None if known else name)
        accuracy = caffelog.accuracy_name(tests)
        if accuracy:
            acc_ax.plot([offset + r["iteration"] for r in tests if accuracy in r],
                        [100 * r[accuracy] for r in tests if accuracy in r], "o-", ms=2, color="C0")
        rates = [(offset + r["iteration"], r["lr"]) for r in train if "lr" in r]
        if rates:
            lr_ax.step(*zip(*rates), where="post", color="C3")
        offset += iterations
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training loss (log)")
    loss_ax.legend(fontsize=8, loc="upper right", ncol=2)
    acc_ax.set_ylabel("test accuracy (%)")
    if not acc_ax.lines:
        acc_ax.text(0.5, 0.5, "no test passes (hint stages have no classifier)", ha="center",
                    transform=acc_ax.transAxes, fontsize=9, color="0.4")
    lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("iteration (the stages one after another)")
    fig.suptitle(f"Training of {Path(stage_dirs[-1]).parent.name if len(stage_dirs) > 1 else stages[0][0]}",
                 fontsize=11)
    fig.tight_layout()
    paths = []
    for suffix in ("png", "pdf"):
        path = Path(f"{path_base}.{suffix}")
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=110, format=suffix)
        write_bytes(path, buffer.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths
