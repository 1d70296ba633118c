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

# No creation date in a PDF, so that a figure drawn again from the same runs is the same file.
SAME_BYTES = {"png": None, "pdf": {"CreationDate": None}}


def stage_curves(stage_dir):
    """(label, train records, test records) of one stage, from its summary and log."""
    stage_dir = Path(stage_dir)
    summary = json.loads((stage_dir / "summary.json").read_text())
    parsed = caffelog.parse_file(stage_dir / "caffe.log")
    return summary["label"], summary["iterations"], parsed.train_records(), parsed.test_records()


LABEL_BASE, LABEL_ROW = 1.01, 0.075  # stage labels above the loss panel: first row, row height (axes fraction)


def stack_labels(fig, labels):
    """Moves each stage label up to the first row where it overlaps no label before it,
    so that short stages' labels stay readable; returns how many rows were used."""
    renderer = fig.canvas.get_renderer()
    row_ends = []  # right edge (display units) of the last label in each row
    for label in labels:
        box = label.get_window_extent(renderer)
        row = next((k for k, end in enumerate(row_ends) if end < box.x0), len(row_ends))
        if row == len(row_ends):
            row_ends.append(0)
        label.set_y(LABEL_BASE + LABEL_ROW * row)
        row_ends[row] = box.x1
    return len(row_ends)


def draw(stage_dirs):
    """The figure of the stages' curves (a matplotlib Figure)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [stage_curves(d) for d in stage_dirs]
    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(3, 1, sharex=True, figsize=(11, 8.5),
                                                 gridspec_kw={"height_ratios": [3, 2, 1.2]})
    loss_ax.set_xlim(0, sum(iterations for _, iterations, _, _ in stages))  # final, so labels can be placed
    colors, offset, labels = {}, 0, []
    for label, iterations, train, tests in stages:
        for ax in (loss_ax, acc_ax, lr_ax):
            ax.axvline(offset, color="0.6", ls=":", lw=1)
        labels.append(loss_ax.text(offset, LABEL_BASE, f" {label}", transform=loss_ax.get_xaxis_transform(),
                                   fontsize=7, va="bottom", ha="left"))
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
    levels = sorted({r["lr"] for _, _, train, _ in stages for r in train if "lr" in r})
    if levels:  # a tick at every rate used (Stage 1's 1e-4 as well as 0.1, 0.01, 0.001)
        lr_ax.set_yticks(levels, [f"{v:g}" for v in levels], fontsize=7)
        lr_ax.minorticks_off()
        lr_ax.set_ylim(levels[0] / 3, levels[-1] * 3)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("iteration (the stages one after another)")
    fig.suptitle(f"Training of {Path(stage_dirs[-1]).parent.name if len(stage_dirs) > 1 else stages[0][0]}",
                 fontsize=11)
    for _ in range(2):  # the rows the labels need change the layout, which changes their widths
        stack_labels(fig, labels)
        fig.tight_layout()
    return fig


def training_figure(stage_dirs, path_base):
    """Draws the stages' curves; writes path_base.png and path_base.pdf; returns their paths."""
    import matplotlib.pyplot as plt

    fig = draw(stage_dirs)
    paths = []
    for suffix in ("png", "pdf"):
        path = Path(f"{path_base}.{suffix}")
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=110, format=suffix, metadata=SAME_BYTES[suffix])
        write_bytes(path, buffer.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths
