"""The paper's tables and figures, rebuilt from finished runs beside the paper's numbers.

A target of analysis/paper_results.json (table1..table6, figure4..figure10) names
its runs; a Study says where they are (output folder, dataset, depths, scale,
nets). Every cell comes from a stage's summary.json: the accuracy at the last
iteration, as the paper reports it; the best test accuracy of a run appears
only in its own, labelled column. A cell whose run is missing or unfinished
says so and holds no number.
"""
import argparse
import csv
import io
import json
import statistics
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from hintkd import caffelog, curves, options, plan, read_table, train
from hintkd.atomic import write_text

PAPER = Path(__file__).resolve().parent.parent / "analysis" / "paper_results.json"
NET_COLUMNS = 3  # the paper's Net 1, Net 2, Net 3


class ReportError(Exception):
    """An unknown target or options that give no study; the message says which."""


def targets():
    return read_table(PAPER)


def target(name):
    table = targets()
    if name not in table:
        raise ReportError(f"unknown target '{name}' (known: {', '.join(table)})")
    return table[name]


@dataclass
class Study:
    """Which runs a target reads: the paper's settings unless overridden."""
    name: str
    out: Path = Path("runs")
    dataset: str = None
    depths: tuple = None
    scale: float = 1.0
    nets: int = NET_COLUMNS
    seed: int = 1
    spec: dict = field(init=False)

    def __post_init__(self):
        self.spec = target(self.name)
        self.out = Path(self.out).resolve()
        self.dataset = self.dataset or self.spec["dataset"]
        self.depths = tuple(self.depths or (self.spec["teacher_depth"], self.spec["student_depth"]))

    def methods(self):
        """Every method the target reads, the reference nets included, in row order."""
        names = [row["method"] for row in self.spec["rows"]] + [r["method"] for r in self.spec.get("reference", [])]
        return list(dict.fromkeys(names))

    def run_arguments(self, method):
        """run_stages.sh's arguments for one method of this study."""
        return [self.dataset, str(self.depths[0]), str(self.depths[1]), method, *self.spec.get("options", []),
                "--scale", f"{self.scale:g}", "--nets", str(self.nets), "--seed", str(self.seed)]

    def run_options(self, method):
        parser = argparse.ArgumentParser()
        options.add_run_arguments(parser)
        args = parser.parse_args(self.run_arguments(method) + ["--data", str(self.out / "data" / self.dataset),
                                                               "--out", str(self.out)])
        return plan.options_from_args(args)

    def progress(self, method):
        """[(stage folder, iterations done, max_iter)] of one method."""
        return plan.progress(self.run_options(method))

    def describe(self):
        paper = f"paper: {self.spec['dataset']}, ResNet-{self.spec['teacher_depth']} -> ResNet-{self.spec['student_depth']}"
        ours = f"ours: {self.dataset}, ResNet-{self.depths[0]} -> ResNet-{self.depths[1]}, scale {self.scale:g}"
        return f"{ours} ({paper})" if self.differs() else ours

    def differs(self):
        return (self.dataset, self.depths) != (self.spec["dataset"], (self.spec["teacher_depth"],
                                                                      self.spec["student_depth"]))

    def folder_name(self):
        name = f"{self.name}-{self.dataset}-resnet{self.depths[0]}to{self.depths[1]}"
        return name + (f"-scale{self.scale:g}" if self.scale != 1 else "")


# --- results -----------------------------------------------------------------

@dataclass
class Cell:
    """One net's result: a value, or a status that says why there is none."""
    final: float = None
    best: float = None
    status: str = "missing"
    summary: dict = None
    folder: Path = None  # its stage folder (its caffe.log), when it has one

    def text(self, value=None):
        value = self.final if value is None else value
        return f"{value:.2f}" if self.status == "done" else self.status


def metric_value(accuracy, metric):
    """An accuracy (0-1) as the paper prints it: P_c in %, or P_e = 100 - P_c."""
    return 100 * accuracy if metric == "Pc" else 100 - 100 * accuracy


def net_cells(study, method):
    """The results of a method's nets (Net 1..K for a teacher-student method, one for a net alone)."""
    stages = study.progress(method)
    per_net = [s for s in stages if s[0].name.startswith("stage2-net")]
    nets = per_net or stages[-1:]
    started = any(done for _, done, _ in stages)
    cells = []
    for folder, done, total in nets:
        summary_path = folder / train.SUMMARY
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            if summary.get("scale") not in (None, study.scale):
                raise ReportError(f"{folder} was trained at scale {summary['scale']}, not {study.scale}")
            final, best = summary.get("final_test"), summary.get("best_test")
            name = caffelog.accuracy_name([final] if final else [])
            if not name:
                cells.append(Cell(status="no test result"))
                continue
            cells.append(Cell(metric_value(final[name], study.spec["metric"]),
                              metric_value(best[name], study.spec["metric"]), "done", summary, folder))
        elif started:
            cells.append(Cell(status=f"unfinished ({done}/{total} it.)" if done else "unfinished"))
        else:
            cells.append(Cell(status="missing"))
    return cells


def stats(values):
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Row:
    label: str
    method: str
    cells: list
    paper: list  # [Net 1, Net 2, Net 3, Avg.] or [Avg.] or None

    @property
    def alone(self):
        """One net trained alone (teacher, student), not Nets 1-3 of a method."""
        return all(stage["kind"] == "alone" for stage in plan.method_table()[self.method]["stages"])

    def complete(self):
        return bool(self.cells) and all(c.status == "done" for c in self.cells)

    def mean_std(self, which="final"):
        """Mean and std over nets, only when every net is done (never over a partial set)."""
        if not self.complete():
            return None, None
        return stats([getattr(c, which) for c in self.cells])

    def paper_avg(self):
        return self.paper[-1] if self.paper else None


def welch_p(a, b):
    """Two-sided p-value of Welch's t-test: do two rows' nets differ beyond their
    spread? Rows whose nets all agree exactly differ with p 0 (or not at all)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 1.0 if statistics.mean(a) == statistics.mean(b) else 0.0
    from scipy import stats as scipy_stats
    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


SIGNIFICANCE = 0.05


def versus_next(rows):
    """For each row, its Welch p-value against the next row (None where either is incomplete)."""
    result = []
    for row, following in zip(rows, rows[1:] + [None]):
        if following is None or not row.complete() or not following.complete():
            result.append(None)
        else:
            result.append(welch_p([c.final for c in row.cells], [c.final for c in following.cells]))
    return result


def _versus_text(p):
    """Three places (0.048), more where rounding would put the number on the other side
    of the rule p < 0.05 than p itself (0.0496, not 0.050)."""
    if p is None:
        return ""
    if p < 0.001:
        return "p<0.001, beyond spread"
    places = 3
    while (round(p, places) < SIGNIFICANCE) != (p < SIGNIFICANCE):
        places += 1
    return f"p={p:.{places}f}, {'beyond' if p < SIGNIFICANCE else 'within'} spread"


def collect(study):
    rows = []
    for row in study.spec["rows"]:
        paper = row.get("paper")
        rows.append(Row(row["label"], row["method"], net_cells(study, row["method"]),
                        paper if isinstance(paper, list) else ([paper] if paper is not None else None)))
    reference = [Row(r["label"], r["method"], net_cells(study, r["method"]), [r["paper"]])
                 for r in study.spec.get("reference", [])]
    return rows, reference


# --- tables ------------------------------------------------------------------

def _number(value, digits=2):
    return "" if value is None else f"{value:.{digits}f}"


def table_rows(study, rows):
    """Header and body as text cells: ours / paper per net, averages, difference, std, best."""
    header = ["Method"] + [f"Net {k}" for k in range(1, NET_COLUMNS + 1)] + \
             ["Avg.", "Paper Avg.", "Diff.", "Std.", "Best-iteration Avg.", "vs. next row"]
    body = []
    for row, p in zip(rows, versus_next(rows)):
        nets = []
        for k in range(NET_COLUMNS):
            ours = row.cells[k].text() if k < len(row.cells) else ("-" if row.alone else "not run (--nets)")
            paper = row.paper[k] if row.paper and len(row.paper) == NET_COLUMNS + 1 else None
            nets.append(ours if paper is None else f"{ours} / {paper:g}")
        mean, std = row.mean_std()
        best, _ = row.mean_std("best")
        status = "" if row.complete() else _status(row.cells)
        diff = mean - row.paper_avg() if mean is not None and row.paper_avg() is not None else None
        body.append([row.label] + nets + [_number(mean) or status, _paper(row.paper_avg()),
                                          "" if diff is None else f"{diff:+.2f}", _number(std), _number(best),
                                          _versus_text(p)])
    return header, body


def _paper(value):
    """A paper number as the paper prints it (0.506, 91.7)."""
    return "" if value is None else f"{value:g}"


def _status(cells):
    """Why a row has no average: each kind of missing net once ("unfinished (3596/4000 it.)"
    and "unfinished" are one kind), with how many nets it holds back when not all."""
    kinds = {}
    for cell in cells:
        if cell.status != "done":
            kind = cell.status.split(" (")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(kind if n == len(cells) else f"{kind} ({n} of {len(cells)} nets)"
                     for kind, n in sorted(kinds.items()))


def net_depth(study, method):
    """The depth of the net a reference row stands for: the teacher's, else the student's."""
    return study.depths[0] if method == "teacher" else study.depths[1]


def reference_rows(study, reference):
    """The paper's label, then which of our nets stands for it (its depth may differ), ours, the paper's."""
    body = []
    for row in reference:
        cell = row.cells[0] if row.cells else Cell()
        body.append([row.label, f"ResNet-{net_depth(study, row.method)}", cell.text(), _paper(row.paper_avg())])
    return ["Reference net (trained alone)", "Our net", "Ours", "Paper"], body


def notes(study):
    metric = "P_c (%), accuracy" if study.spec["metric"] == "Pc" else "P_e (%), error rate = 100 - P_c"
    lines = [f"{study.spec['title']}",
             f"Source: {study.spec['source']}. {study.describe()}.",
             f"Metric: {metric}, at the last iteration of each run, as in the paper. Net cells: ours / paper. "
             "Diff. = our Avg. - paper Avg.; Std. = sample standard deviation over our nets. "
             "Best-iteration Avg. is the mean of each net's best test value at any iteration after 0: "
             "not the paper's measure, shown for reference only. "
             f"vs. next row: Welch's two-sided t-test between this row's nets and the next row's (last-iteration "
             f"values); p < {SIGNIFICANCE:g} reads 'beyond spread', otherwise the two rows' difference lies within "
             "the spread of their nets. With three nets per row only large, consistent differences pass."]
    if study.differs():
        lines.append("Our runs use another dataset or other depths than the paper's: the paper's numbers are "
                     "shown for orientation, not as a target.")
    return lines


def markdown(study, rows, reference, heading=None):
    def table(header, body):
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return lines + ["| " + " | ".join(cells) + " |" for cells in body]
    parts = [f"### {heading or notes(study)[0]}", ""] + [line + "  " for line in notes(study)[1:]]
    if rows:
        parts += [""] + table(*table_rows(study, rows))
    if reference:
        parts += [""] + table(*reference_rows(study, reference))
    return "\n".join(parts) + "\n"


def csv_text(study, rows, reference):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["target", "dataset", "scale", "metric", "method", "label", "net", "ours_final", "ours_best",
                     "paper", "status", "welch_p_vs_next"])
    p_values = dict(zip(map(id, rows), versus_next(rows)))
    for kind, group in (("row", rows), ("reference", reference)):
        for row in group:
            where = [study.name, study.dataset, f"{study.scale:g}", study.spec["metric"], row.method, row.label]
            for k, cell in enumerate(row.cells, start=1):
                paper = row.paper[k - 1] if row.paper and len(row.paper) == NET_COLUMNS + 1 and k <= NET_COLUMNS \
                    else (row.paper[0] if kind == "reference" and row.paper else None)
                writer.writerow(where + [k if kind == "row" else "alone", _number(cell.final, 4),
                                         _number(cell.best, 4), "" if paper is None else paper, cell.status, ""])
            if kind == "row":
                mean, std = row.mean_std()
                best, _ = row.mean_std("best")
                status = "done" if row.complete() else _status(row.cells)
                p = p_values[id(row)]
                writer.writerow(where + ["avg", _number(mean, 4), _number(best, 4),
                                         "" if row.paper_avg() is None else row.paper_avg(), status,
                                         "" if p is None else f"{p:.4f}"])
                writer.writerow(where + ["std", _number(std, 4), "", "", status, ""])
    return out.getvalue()


def latex(study, rows, reference):
    def escape(text):
        return str(text).replace("\\", r"\textbackslash{}").replace("&", r"\&").replace("%", r"\%") \
            .replace("_", r"\_").replace("#", r"\#").replace("+", "$^{+}$").replace("->", r"$\to$")
    header, body = table_rows(study, rows)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{escape(notes(study)[0])}. {escape(study.describe())}}}",
             r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\hline",
             " & ".join(escape(h) for h in header) + r" \\", r"\hline"]
    lines += [" & ".join(escape(c) for c in cells) + r" \\" for cells in body]
    lines.append(r"\hline")
    if reference:
        ref_header, ref_body = reference_rows(study, reference)
        lines += [rf"\multicolumn{{{len(header)}}}{{l}}{{{escape(ref_header[0])}: ours / paper}} \\"]
        lines += [rf"\multicolumn{{{len(header)}}}{{l}}{{{escape(c[0])} ({escape(c[1])}): {escape(c[2])} / {escape(c[3])}}} \\"
                  for c in ref_body]
        lines.append(r"\hline")
    lines += [r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# --- figures -----------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def points_figure(study, rows, reference):
    """Each net as a point, each row's mean with its spread (std.) beside them, the
    paper's average as a dash; the nets trained alone as horizontal lines. Points,
    not bars: an axis that starts far above 0 does not make small gaps look large."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(rows) + 3), 4.2))  # room for the title and the legend
    ylabel = "P_c (%)" if study.spec["metric"] == "Pc" else "P_e (%)"

    def label_once(text):
        return text if text not in ax.get_legend_handles_labels()[1] else None

    for x, row in enumerate(rows):
        finals = [c.final for c in row.cells if c.status == "done"]
        offsets = [0.08 * (k - (len(finals) - 1) / 2) for k in range(len(finals))]
        ax.plot([x - 0.15 + o for o in offsets], finals, "o", color=f"C{x}", ms=5,
                label=label_once("ours: each net (last iteration)"))
        mean, std = row.mean_std()
        if mean is not None:
            ax.errorbar(x + 0.12, mean, yerr=std or 0, fmt="s", color="k", ms=5, capsize=4,
                        label=label_once("ours: mean, bar = std. over nets"))
            ax.text(x + 0.2, mean, f"{mean:.2f}", ha="left", va="center", fontsize=8)
        elif not finals:
            ax.text(x, 0.5, _status(row.cells) or "missing", ha="center", va="bottom", rotation=90,
                    fontsize=8, transform=ax.get_xaxis_transform())
        if row.paper_avg() is not None:
            ax.plot([x - 0.3, x + 0.3], [row.paper_avg()] * 2, "k--", lw=1.5, label=label_once("paper (Avg.)"))
    for i, ref in enumerate(reference):
        cell = ref.cells[0] if ref.cells else Cell()
        if cell.status == "done":
            ax.axhline(cell.final, color=("0.35", "0.65")[i % 2], ls=":", lw=1.2,
                       label=f"ours: {ref.method} ResNet-{net_depth(study, ref.method)} alone {cell.final:.2f}")
    ax.set_xticks(range(len(rows)), [r.label for r in rows], rotation=20, ha="right", fontsize=9)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel(ylabel)
    fig.suptitle(f"{study.spec['title']}\n{study.describe()}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def curve_figure(study, rows, reference):
    """Figure 4: Stage 2 test accuracy and loss over iterations (Net 1 of each method)."""
    plt = _pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, row in enumerate(rows):
        cell = next((c for c in row.cells if c.status == "done"), None)
        log = cell and (cell.folder / "caffe.log" if cell.folder else Path(cell.summary["log"]))
        if cell is None or not log.is_file():
            missing = "log missing" if cell else _status(row.cells) or "missing"
            acc_ax.plot([], [], color=f"C{i}", label=f"{row.label}: {missing}")
            continue
        tests = caffelog.parse_file(log).test_records()
        name = caffelog.accuracy_name(tests)
        its = [r["iteration"] for r in tests if name in r]
        acc_ax.plot(its, [100 * r[name] for r in tests if name in r], color=f"C{i}", label=row.label)
        # "cross_entropy" names CE(y, P_S); runs made before it had that name call it "loss".
        ce = next((key for key in ("cross_entropy", "loss") if any(key in r for r in tests)), None)
        if ce:
            loss_ax.plot([r["iteration"] for r in tests if ce in r], [r[ce] for r in tests if ce in r],
                         color=f"C{i}", label=row.label)
        if row.paper_avg() is not None:
            acc_ax.axhline(row.paper_avg(), color=f"C{i}", ls=":", label=f"paper: {row.label} {row.paper_avg():.2f}")
    for ref in reference:
        acc_ax.axhline(ref.paper_avg(), color="k", ls="--", lw=1, label=f"paper: {ref.label} {ref.paper_avg():.2f}")
    acc_ax.set(xlabel="iteration", ylabel="test accuracy P_c (%)", title="Test accuracy (cases 3-5)")
    loss_ax.set(xlabel="iteration", ylabel="test cross-entropy loss", title="Test loss (cases 1-2)")
    acc_ax.legend(fontsize=7, loc="lower right")
    if loss_ax.get_legend_handles_labels()[0]:
        loss_ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{study.spec['title']}\n{study.describe()}", fontsize=9)
    fig.tight_layout()
    return fig


def hint_loss_figure(study, rows, reference):
    """Figure 9: each hint loss over its training, normalized per hint by the larger of the two curves."""
    plt = _pyplot()
    curves = {}  # (method, hint number) -> (iterations, losses)
    for row in rows:
        for folder, done, total in study.progress(row.method):
            if not folder.name.startswith("stage1") or not (folder / "caffe.log").exists():
                continue
            records = caffelog.parse_file(folder / "caffe.log").train_records()
            for key in sorted({k for r in records for k in r if k.startswith("hint")}):
                points = [(r["iteration"], r[key]) for r in records if key in r]
                curves[(row.method, int(key[4:]))] = ([p[0] for p in points], [p[1] for p in points])
    hints = sorted({h for _, h in curves}) or [1, 2, 3]
    fig, axes = plt.subplots(1, len(hints), figsize=(4 * len(hints), 3.8), squeeze=False)
    for ax, hint in zip(axes[0], hints):
        scale = max([max(curves[(r.method, hint)][1]) for r in rows if (r.method, hint) in curves] or [1]) or 1
        for row, style in zip(rows, ("--", "-")):
            if (row.method, hint) in curves:
                its, losses = curves[(row.method, hint)]
                ax.plot(its, [v / scale for v in losses], style, label=row.label)
            else:
                ax.plot([], [], style, label=f"{row.label}: {_status(row.cells) or 'missing'}")
        ax.set(xlabel="iteration of its step or stage", ylabel="normalized hint loss", title=f"loss {hint}")
        ax.legend(fontsize=7)
    fig.suptitle(f"{study.spec['title']}\n{study.describe()}", fontsize=9)
    fig.tight_layout()
    return fig


FIGURES = {"points": points_figure, "curves": curve_figure, "hint_losses": hint_loss_figure}


def build(study):
    """Writes the target's files under OUT/reports/; returns (folder, markdown text or None)."""
    rows, reference = collect(study)
    folder = study.out / "reports" / study.folder_name()
    folder.mkdir(parents=True, exist_ok=True)
    kind = study.spec["kind"]
    text = markdown(study, rows, reference)
    write_text(folder / "table.md", text)
    write_text(folder / "table.csv", csv_text(study, rows, reference))
    if kind == "table":
        write_text(folder / "table.tex", latex(study, rows, reference))
    fig = FIGURES["points" if kind == "table" else kind](study, rows, reference)  # a table is also drawn
    for suffix in ("png", "pdf"):
        tmp = folder / f".figure.tmp.{suffix}"
        fig.savefig(tmp, dpi=120, format=suffix, metadata=curves.SAME_BYTES[suffix])
        tmp.replace(folder / f"figure.{suffix}")
    _pyplot().close(fig)
    return folder, text


# --- runs of your own side by side -------------------------------------------

def run_rows(folders):
    """Rows of finished runs, in the order given: a teacher-student run's folder (its
    run.json: Nets 1-K) or a net trained alone (its summary.json; nets alone with the
    same label given one after another, e.g. seeds 1-3, are one row's Nets 1-3), with
    the teachers the runs learned from, as (rows, teachers {label: accuracy %})."""
    rows, teachers = [], {}
    for folder in map(Path, folders):
        if (folder / "run.json").exists():
            run = json.loads((folder / "run.json").read_text())
            stages = [json.loads((Path(s["folder"]) / train.SUMMARY).read_text()) for s in run["stages"]]
            nets = [s for s in stages if s.get("stage") == "stage2"]
            for s in stages:
                if s.get("trains") == "teacher":
                    teachers[s["label"]] = 100 * s["final_test"]["accuracy"]
            label = run["method"]
        elif (folder / train.SUMMARY).exists():
            nets = [json.loads((folder / train.SUMMARY).read_text())]
            label = nets[0]["label"]
        else:
            raise ReportError(f"{folder} holds neither run.json nor {train.SUMMARY}: is the run finished?")
        cells = [Cell(100 * s["final_test"]["accuracy"], 100 * s["best_test"]["accuracy"], "done", s) for s in nets]
        if rows and rows[-1].label == label and "net" not in nets[0]:
            rows[-1].cells += cells
        else:
            rows.append(Row(label, nets[0].get("method", label), cells, None))
    return rows, teachers


def runs_markdown(rows, teachers, title):
    """A table of runs: accuracy (%) of each net at its last iteration, mean, std, Welch's p to the next row."""
    columns = max(len(r.cells) for r in rows)
    header = ["Method"] + [f"Net {k}" for k in range(1, columns + 1)] + ["Avg.", "Std.", "vs. next row"]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, p in zip(rows, versus_next(rows)):
        mean, std = row.mean_std()
        nets = [c.text() for c in row.cells] + ["-"] * (columns - len(row.cells))
        lines.append("| " + " | ".join([row.label, *nets, _number(mean), _number(std), _versus_text(p)]) + " |")
    lines += [""] + [f"Teacher: {label}, {value:.2f}%  " for label, value in teachers.items()]
    lines += ["Accuracy (%) on the test set at the last iteration of each net; Std. over the nets; vs. next row: "
              f"Welch's two-sided t-test, p < {SIGNIFICANCE:g} reads 'beyond spread'."]
    return "\n".join(lines) + "\n"


def runs_csv(rows):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "net", "final", "best", "welch_p_vs_next"])
    for row, p in zip(rows, versus_next(rows)):
        for k, cell in enumerate(row.cells, start=1):
            writer.writerow([row.label, k, _number(cell.final, 4), _number(cell.best, 4), ""])
        mean, std = row.mean_std()
        writer.writerow([row.label, "avg", _number(mean, 4), "", "" if p is None else f"{p:.4f}"])
        writer.writerow([row.label, "std", _number(std, 4), "", ""])
    return out.getvalue()


# --- one run beside the paper ------------------------------------------------

def _setting(opts):
    """What makes two runs the same run: every option but where it lives and how many nets."""
    return {f.name: getattr(opts, f.name) for f in fields(opts) if f.name not in ("data_dir", "out", "nets")}


def beside_paper(opts):
    """The end of run_stages.sh: this run in each paper table that has exactly its setting, the
    paper's numbers beside ours; else in the closest table that differs only in dataset or depths
    (the paper's numbers then for orientation, as the table says); else which table is closest."""
    if opts.teacher_net or opts.student_net:
        return ("Beside the paper: its tables hold its own ResNets, not these nets; analysis/compare_runs.py "
                "puts runs of several methods side by side.\n")
    exact, closest = [], None
    for name, spec in targets().items():
        methods = [r["method"] for r in spec.get("rows", []) + spec.get("reference", [])]
        if spec["kind"] != "table" or opts.method not in methods:
            continue
        study = Study(name, opts.out, scale=opts.scale, nets=opts.nets, seed=opts.seed)  # the paper's setting
        paper, ours = _setting(study.run_options(opts.method)), _setting(opts)
        differ = sorted(k for k in ours if ours[k] != paper[k])
        if not differ:
            exact.append(_run_in_table(study, opts.method))
        elif closest is None or len(differ) < len(closest[1]):
            closest = (name, differ)
    if exact or closest is None:
        return "\n".join(exact)
    name, differ = closest
    if set(differ) <= {"dataset", "teacher_depth", "student_depth"}:
        study = Study(name, opts.out, opts.dataset, (opts.teacher_depth, opts.student_depth), opts.scale,
                      opts.nets, opts.seed)
        return _run_in_table(study, opts.method)
    return f"Beside the paper: no table of the paper has this run's setting; the closest, {name}, differs in " \
           f"{', '.join(differ)}.\n"


def _run_in_table(study, method):
    """One method's row (or reference row) of a table, the finished reference nets, and the table's command."""
    rows, reference = collect(study)
    rows = [r for r in rows if r.method == method]
    reference = [r for r in reference if r.method == method or r.complete()]
    command = f"./run_stages.sh reproduce {study.name}"
    if study.differs():
        command += f" --dataset {study.dataset} --depths {study.depths[0]},{study.depths[1]}"
    if study.scale != 1:
        command += f" --scale {study.scale:g}"
    heading = None
    if study.differs():  # say so before the paper's title, which names the paper's setting
        heading = (f"Another setting than the paper's ({study.dataset}, ResNet-{study.depths[0]} -> "
                   f"ResNet-{study.depths[1]}), beside the closest table: {notes(study)[0]}")
    return markdown(study, rows, reference, heading) + f"\nThe whole table: {command}\n"


def write_comparison(opts, show=True):
    """Writes the run beside the paper to comparison.md beside the run's summary, and prints
    it (show) or only where it is (a study, whose own table comes last)."""
    text = beside_paper(opts)
    if text:
        if show:
            print("\n" + text, end="")
        # Beside run.json (a teacher-student run) or the summary of a net trained alone.
        stages = plan.plan(opts, write=False)
        path = (stages[-1].parent if len(stages) > 1 else stages[0]) / "comparison.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
        print(f"comparison with the paper: {path}")


def main(argv=None):
    """python3 -m hintkd.report DATASET T S METHOD --data DIR --out DIR [options]: the run beside the paper."""
    parser = argparse.ArgumentParser(prog="python3 -m hintkd.report", description=main.__doc__)
    options.add_run_arguments(parser)
    write_comparison(plan.options_from_args(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
