"""Logs into records and CSVs; finished runs into the paper's tables and figures."""
import csv
import gzip
import json
import math
import os
import re
import statistics
import subprocess
import sys

import pytest

from conftest import CAFFE_LOGS as LOGS, REPO, SCALE, TABLE1_STUDIES, out_with_data, run
from hintkd import caffelog

PARSE_LOG = str(REPO / "analysis" / "parse_log.py")
RUN_STAGES = str(REPO / "run_stages.sh")
DIGITS = ["--dataset", "digits", "--depths", "14,8", "--scale", SCALE]


def parse_log(*args, **kwargs):
    return run(["/usr/bin/python3", PARSE_LOG, *map(str, args)], **kwargs)


# --- logs ----------------------------------------------------------------------

# Read by hand from the files (zcat | grep): test points, final and best test accuracy.
EXTERNAL = [
    ("resnet-20__2016-08-14_00-25-56.log.gz", 65, 641, (64000, 0.917031), (60000, 0.918594)),
    ("resnet-20__2018-10-19_01-43-18.log.gz", 65, 641, (64000, 0.914), (59000, 0.9142)),
    ("resnet-32__2018-10-19_01-44-03.log.gz", 65, 641, (64000, 0.9248), (62000, 0.9255)),
    # Its test at iteration 0 prints Accuracy = 0.999 with the loss at Caffe's clamp (87.25): not the best.
    ("resnet-56__2018-10-23_12-27-50.log.gz", 65, 65, (64000, 0.9285), (63000, 0.9286)),
]


@pytest.mark.parametrize("name,tests,trains,final,best", EXTERNAL)
def test_parse_log_reads_the_external_logs(tmp_path, name, tests, trains, final, best):
    result = parse_log(LOGS / name, "--json", "--out-dir", tmp_path)
    report = json.loads(result.stdout)
    assert (report["test_points"], report["train_points"], report["done"]) == (tests, trains, True)
    assert (report["final"]["iteration"], report["final"]["accuracy"]) == final
    assert (report["best"]["iteration"], report["best"]["accuracy"]) == best
    assert report["accuracy_name"] == "Accuracy" and not report["warnings"] and result.stderr == ""
    assert len(report["test"]) == tests and report["test"][-1]["iteration"] == 64000
    assert all("loss" in r and "Accuracy" in r for r in report["test"])
    base = name[:-3]
    with open(tmp_path / f"{base}.test") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["NumIters", "Seconds", "LearningRate"] and len(rows) == tests
    assert (tmp_path / f"{base}.train").exists()


def test_caffe_csv_rows_match_the_log_lines():
    """resnet-20 2018: lines read by hand (first line at 01:43:19.041349)."""
    parse_log(LOGS / "resnet-20__2018-10-19_01-43-18.log.gz", "--out-dir", "/tmp/hintkd-csv-check")
    test_rows = {r["NumIters"]: r for r in csv.DictReader(open("/tmp/hintkd-csv-check/"
                                                                "resnet-20__2018-10-19_01-43-18.log.test"))}
    # 03:33:52.174854 Test net output #0: Accuracy = 0.8228; the lr printed before it was 0.1.
    assert test_rows["32000"] == {"NumIters": "32000", "Seconds": "6633.133505", "LearningRate": "0.1",
                                  "Accuracy": "0.8228", "loss": "0.655593"}
    train_rows = {r["NumIters"]: r for r in csv.DictReader(open("/tmp/hintkd-csv-check/"
                                                                 "resnet-20__2018-10-19_01-43-18.log.train"))}
    assert train_rows["32000"]["LearningRate"] == "0.01" and train_rows["100"]["Seconds"] == "27.399009"


def test_a_truncated_gzip_log_gives_what_it_holds_and_a_warning(tmp_path):
    data = (LOGS / "resnet-20__2016-08-14_00-25-56.log.gz").read_bytes()
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(data[: len(data) // 2])
    result = parse_log(cut, "--json")
    report = json.loads(result.stdout)
    assert 0 < report["test_points"] < 65 and report["done"] is False
    assert "warning" in result.stderr and ("stopped reading" in result.stderr or "Optimization Done" in result.stderr)
    full = {r["iteration"]: r for r in caffelog.parse_file(LOGS / "resnet-20__2016-08-14_00-25-56.log.gz").test_records()}
    for record in report["test"]:  # what was read is exact, never invented
        assert record == pytest.approx(full[record["iteration"]])


def test_a_log_cut_inside_a_test_pass_and_garbage_lines(tmp_path):
    text = gzip.open(LOGS / "resnet-32__2018-10-19_01-44-03.log.gz", "rt").read().splitlines()
    last_test = max(i for i, line in enumerate(text) if "Testing net" in line and "Iteration 20000," in line)
    cut_at = next(i for i in range(last_test, len(text)) if "Test net output #0" in text[i]) + 1
    damaged = text[:100] + ["\x00\x00 binary junk", "I1019 02:00:00.000000 1 solver.cpp:1] Iteration x, loss = y",
                            "I1019 02:00:00.000000 1 solver.cpp:397]     Test net output #0: Accuracy = not-a-number"] \
        + text[100:cut_at]
    log = tmp_path / "damaged.log"
    log.write_text("\n".join(damaged) + "\n")
    result = parse_log(log, "--json", "--no-csv")
    report = json.loads(result.stdout)
    assert report["test"][-1]["iteration"] == 20000 and "loss" not in report["test"][-1]
    assert "incomplete" in result.stderr and "cannot read" in result.stderr
    assert report["final"]["iteration"] == 20000
    assert not list(tmp_path.glob("*.test"))


def test_not_a_log_and_a_missing_file(tmp_path):
    empty = tmp_path / "notes.txt"
    empty.write_text("hello\n")
    result = parse_log(empty, "--no-csv")
    assert result.returncode == 0 and "no training or test records" in result.stderr
    missing = parse_log(tmp_path / "nope.log", check=False)
    assert missing.returncode == 1 and "no such log file" in missing.stderr


def test_our_own_logs_parse_with_every_output_by_name(methods_out):
    run([RUN_STAGES, "digits", "14", "8", "concurrent", "--scale", SCALE, "--out", str(methods_out)])
    (stage1,) = (methods_out / "digits").glob(f"concurrent-resnet14to8-scale{SCALE}/stage1")
    report = json.loads(parse_log(stage1 / "caffe.log", "--json", "--no-csv").stdout)
    with_outputs = [r for r in report["train"] if "hint1" in r]
    assert with_outputs and all({"hint2", "hint3"} <= set(r) for r in with_outputs) and report["done"]
    (net1,) = (methods_out / "digits").glob(f"concurrent-resnet14to8-scale{SCALE}/stage2-net1")
    report = json.loads(parse_log(net1 / "caffe.log", "--json", "--no-csv").stdout)
    summary = json.loads((net1 / "summary.json").read_text())
    assert report["final"]["accuracy"] == summary["final_test"]["accuracy"]
    assert {"accuracy", "cross_entropy"} <= set(report["test"][-1]) and "kd" not in report["test"][-1]  # student alone
    assert any("kd" in r for r in report["train"])
    assert all("total_loss" in r for r in report["train"])  # the weighted sum, never called "loss"


# --- tables and figures --------------------------------------------------------

def reproduce(*args, check=True):
    return run([RUN_STAGES, "reproduce", *map(str, args)], check=check)


def accuracies(out, method, nets=3):
    found = []
    for k in range(1, nets + 1):
        (folder,) = (out / "digits").glob(f"{method}-resnet14to8-scale{SCALE}/stage2-net{k}")
        found.append(json.loads((folder / "summary.json").read_text()))
    return found


def test_a_dry_run_on_a_busy_machine_says_its_estimate_does_not_hold(tmp_path):
    """Every core busy with another process while the nets are timed: the timings run
    several times too long, and the dry run says so instead of printing the figure alone."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count())]
    try:
        dry = reproduce("table4", *DIGITS, "--out", tmp_path, "--dry-run").stdout
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert re.search(r"note: other processes used \d+% of the \d+ cores while the nets were timed", dry), dry
    assert "on an idle machine" in dry


def test_table4_reproduced_on_digits_beside_the_paper(methods_out):
    dry = reproduce("table4", *DIGITS, "--out", methods_out, "--dry-run").stdout
    assert "iterations still to go" in dry and "sl-resnet-kd" in dry and "student" in dry
    assert f"data: digits: prepared at {methods_out / 'data' / 'digits'}" in dry
    assert re.search(r"about \d+:\d\d:\d\d on this machine", dry) and re.search(r"\d:\d\d:\d\d left", dry)
    result = reproduce("table4", *DIGITS, "--out", methods_out)
    folder = methods_out / "reports" / f"table4-digits-resnet14to8-scale{SCALE}"
    assert {p.name for p in folder.iterdir()} == {"table.md", "table.csv", "table.tex", "figure.png", "figure.pdf"}
    table = (folder / "table.md").read_text()
    assert table in result.stdout
    proposed = next(line for line in table.splitlines() if line.startswith("| Proposed method"))
    nets = accuracies(methods_out, "proposed")
    errors = [100 - 100 * s["final_test"]["accuracy"] for s in nets]  # P_e, as Table 4
    cells = [c.strip() for c in proposed.split("|")[1:-1]]
    assert cells[1:4] == [f"{e:.2f} / {p}" for e, p in zip(errors, ["0.38", "0.4", "0.39"])]
    assert cells[4] == f"{statistics.mean(errors):.2f}" and cells[5] == "0.39"
    assert cells[6] == f"{statistics.mean(errors) - 0.39:+.2f}" and cells[7] == f"{statistics.stdev(errors):.2f}"
    best = [100 - 100 * s["best_test"]["accuracy"] for s in nets]
    assert cells[8] == f"{statistics.mean(best):.2f}"  # the best-iteration value, in its own column only
    assert "Best-iteration Avg." in table and "not the paper's measure" in table
    kd = next(line for line in table.splitlines() if line.startswith("| KD without Hints"))
    assert [c.strip() for c in kd.split("|")[1:-1]][9].startswith("p=") and cells[9] == ""  # the last has no next
    assert "Welch's two-sided t-test" in table
    assert "paper: mnist, ResNet-32 -> ResNet-8" in table
    teacher = json.loads((methods_out / "digits" / f"teacher-resnet14-w16.32.64-scale{SCALE}" / "summary.json").read_text())
    assert f"| 32-layer teacher ResNet | ResNet-14 | {100 - 100 * teacher['final_test']['accuracy']:.2f} | 0.39 |" \
        in table  # our ResNet-14 stands for the paper's 32-layer teacher, and says so
    rows = list(csv.DictReader(open(folder / "table.csv")))
    assert {r["method"] for r in rows} >= {"kd", "hint-kd", "sl-resnet", "sl-resnet-kd", "proposed", "student"}
    assert r"\begin{tabular}" in (folder / "table.tex").read_text()
    again = reproduce("table4", *DIGITS, "--out", methods_out)
    assert again.stdout.count(": finished earlier\n") == 7


def test_missing_unfinished_and_other_scale_runs_are_never_filled(methods_out):
    result = reproduce("table1", *DIGITS, "--out", methods_out, "--report-only", "--nets", "3")
    table1 = result.stdout
    hint_kd_plus = next(line for line in table1.splitlines() if line.startswith("| Hint-KD+"))
    assert "/ 90.77" in hint_kd_plus  # the paper's number stays beside our cell
    # Another scale, of which nothing is finished: no table of empty cells, the runs named instead.
    other_scale = reproduce("table1", "--dataset", "digits", "--depths", "14,8", "--scale", "0.07",
                            "--out", methods_out, "--report-only", check=False)
    assert other_scale.returncode == 1 and other_scale.stdout == ""
    assert "nothing of table1 is finished" in other_scale.stderr and "runs missing: kd, hint-kd" in other_scale.stderr
    assert not (methods_out / "reports" / "table1-digits-resnet14to8-scale0.07").exists()
    # A stage killed half-way: its net is unfinished, the average is not taken over the rest.
    (net3,) = (methods_out / "digits").glob(f"hint-kd-resnet14to8-scale{SCALE}/stage2-net3")
    (net3 / "summary.json").rename(net3 / "summary.json.away")
    try:
        table = reproduce("table1", *DIGITS, "--out", methods_out, "--report-only").stdout
    finally:
        (net3 / "summary.json.away").rename(net3 / "summary.json")
    hint_kd = next(line for line in table.splitlines() if line.startswith("| Original Hint-KD"))
    cells = [c.strip() for c in hint_kd.split("|")[1:-1]]
    assert cells[3].startswith("unfinished") and cells[4].startswith("unfinished") and cells[6] == ""


@pytest.mark.parametrize("figure", ["figure4", "figure7", "figure8", "figure9"])
def test_figures_from_runs_made_here(methods_out, figure):
    result = reproduce(figure, *DIGITS, "--out", methods_out)
    folder = methods_out / "reports" / f"{figure}-digits-resnet14to8-scale{SCALE}"
    for name in ("figure.png", "figure.pdf", "table.md", "table.csv"):
        assert (folder / name).stat().st_size > 1000 or name.startswith("table"), name
    assert (folder / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "missing" not in result.stdout.split("###", 1)[1]


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory, digits_data):
    """One output folder for the targets run at --quick: their teachers train once."""
    return out_with_data(tmp_path_factory.mktemp("targets"), digits_data)


@pytest.mark.parametrize("target", ["table2", "table5", "table6", "figure5", "figure10"])
def test_every_other_target_runs_on_digits(quick_out, target):
    """The targets no other test runs, end to end at --quick: CIFAR-100's nets and the
    regressor's wider teachers (tables 5, 6), the figures of the layer-wise comparison."""
    result = reproduce(target, "--dataset", "digits", "--depths", "14,8", "--quick", "--out", quick_out)
    folder = quick_out / "reports" / f"{target}-digits-resnet14to8-scale0.01"
    names = {p.name for p in folder.iterdir()}
    assert {"table.md", "table.csv", "figure.png", "figure.pdf"} <= names
    table = (folder / "table.md").read_text()
    assert table in result.stdout and "missing" not in table and "unfinished" not in table
    rows = list(csv.DictReader(open(folder / "table.csv")))
    nets = [row for row in rows if row["net"] in ("1", "2", "3", "alone")]
    assert nets and all(row["status"] == "done" for row in rows)
    assert all(0 < float(row["ours_final"]) <= 100 for row in nets), nets  # each a trained net's P_c or P_e
    if target.startswith("table"):  # the statistics as computed here, not only as kept
        assert assert_statistics_by_hand(folder, printed=False)


def test_unknown_target_and_bad_options(methods_out):
    result = reproduce("table9", "--out", methods_out, "--dry-run", check=False)
    assert result.returncode == 2 and "unknown target 'table9'" in result.stderr
    assert result.stderr.startswith("run_stages.sh reproduce: error: ") and result.stderr.count("\n") == 1
    result = reproduce("table1", "--depths", "14", "--dry-run", check=False)
    assert result.returncode == 2 and "--depths takes TEACHER,STUDENT" in result.stderr


def test_a_run_in_the_papers_own_setting_sits_beside_its_tables(tmp_path):
    """run_stages.sh ends with `python3 -m hintkd.report` on its own arguments: MNIST 32 -> 8 is the
    setting of Tables 3 and 4, so both rows appear with the paper's numbers, ours not yet run."""
    args = ["mnist", "32", "8", "proposed", "--data", str(tmp_path / "data" / "mnist"), "--out", str(tmp_path)]
    text = run(["/usr/bin/python3", "-m", "hintkd.report", *args, "--scale", "0.5"]).stdout
    assert "### TABLE 3 P_e" in text and "### TABLE 4 P_e" in text and "orientation" not in text
    assert "Another setting" not in text  # the paper's own setting: the paper's heading as it is
    assert "| Proposed approach | missing / 0.41 | missing / 0.4 | missing / 0.44 | missing | 0.416 |" in text
    assert "The whole table: ./run_stages.sh reproduce table3 --scale 0.5" in text
    other = run(["/usr/bin/python3", "-m", "hintkd.report", *args, "--tau", "2"]).stdout
    assert "no table of the paper has this run's setting; the closest, table3, differs in tau" in other
    assert "###" not in other
    assert run(["/usr/bin/python3", "-m", "hintkd.report", *args[:3], "concurrent", *args[4:]]).stdout == ""


def test_each_row_says_whether_it_differs_from_the_next_beyond_the_spread_of_its_nets():
    from scipy import stats as scipy_stats

    from hintkd.report import Cell, Row, versus_next, welch_p

    def row(*values):
        return Row("label", "kd", [Cell(final=v, status="done") for v in values], None)
    apart, close = ([90.1, 90.3, 90.2], [91.0, 91.2, 91.1]), ([90.0, 91.0, 92.0], [90.5, 91.5, 89.9])
    assert welch_p(*apart) == scipy_stats.ttest_ind(*apart, equal_var=False).pvalue < 0.05
    assert welch_p(*close) > 0.05
    assert welch_p([1, 1, 1], [1, 1, 1]) == 1.0 and welch_p([1, 1, 1], [2, 2, 2]) == 0.0
    unfinished = Row("label", "kd", [Cell(final=1.0, status="done"), Cell(status="unfinished")], None)
    assert versus_next([row(*apart[0]), row(*apart[1]), unfinished, row(*close[0])]) == \
        [welch_p(*apart), None, None, None]


def test_a_table_is_drawn_as_points_for_each_net_with_each_rows_mean(methods_out):
    """Not bars: each net a point, each row's mean with its std., the paper's average a dash."""
    from hintkd import report
    reproduce("table4", *DIGITS, "--out", methods_out)
    study = report.Study("table4", methods_out, "digits", (14, 8), float(SCALE))
    rows, reference = report.collect(study)
    ax = report.points_figure(study, rows, reference).axes[0]
    assert not ax.patches  # no bar anywhere
    points = sorted(y for line in ax.lines if line.get_marker() == "o" for y in line.get_ydata())
    assert points == sorted(c.final for row in rows for c in row.cells) and len(points) == 3 * len(rows)
    means = [c.lines[0].get_ydata()[0] for c in ax.containers]  # errorbar containers: the means
    assert means == pytest.approx([row.mean_std()[0] for row in rows])
    dashes = [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"]
    assert dashes == [row.paper_avg() for row in rows]


def test_a_p_value_is_printed_on_its_own_side_of_the_rule():
    from hintkd.report import SIGNIFICANCE, _versus_text
    assert _versus_text(0.0482) == "p=0.048, beyond spread"  # the kept study's Hint-KD row
    assert _versus_text(0.51) == "p=0.510, within spread" and _versus_text(0.0004) == "p<0.001, beyond spread"
    for p in (0.04951, 0.0496, 0.04999, 0.0500, 0.05004, 0.0501):
        shown = float(re.search(r"p=([\d.]+)", _versus_text(p)).group(1))
        assert (shown < SIGNIFICANCE) == (p < SIGNIFICANCE) and ("beyond" in _versus_text(p)) == (p < SIGNIFICANCE), p


@pytest.mark.parametrize("kept", TABLE1_STUDIES, ids=lambda folder: folder.name)
def test_the_docs_show_the_kept_study_table_as_reproduce_wrote_it(kept):
    """docs/study-table1.md and analysis/studies/ hold the same table, for each study."""
    assert kept.joinpath("table.md").read_text().rstrip("\n") in (REPO / "docs" / "study-table1.md").read_text()
    rows = list(csv.DictReader(open(kept / "table.csv")))
    assert {r["method"] for r in rows} == {"kd", "hint-kd", "hint-kd+", "proposed", "student", "teacher"}
    assert all(r["status"] == "done" for r in rows)
    assert (kept / "figure.png").stat().st_size > 0 and r"\begin{tabular}" in (kept / "table.tex").read_text()


def welch_by_hand(a, b):
    """Welch's two-sided p from its formula: t over the unpooled standard error, the
    Welch-Satterthwaite degrees of freedom, Student's t tail (not scipy's t-test)."""
    from scipy import stats as scipy_stats
    (ma, va), (mb, vb) = ((sum(x) / len(x), sum((v - sum(x) / len(x)) ** 2 for v in x) / (len(x) - 1)) for x in (a, b))
    ea, eb = va / len(a), vb / len(b)
    t = (ma - mb) / math.sqrt(ea + eb)
    df = (ea + eb) ** 2 / (ea ** 2 / (len(a) - 1) + eb ** 2 / (len(b) - 1))
    return 2 * scipy_stats.t.sf(abs(t), df)


def test_welchs_test_is_not_the_pooled_one_where_the_variances_differ():
    """Nets 1-3 of one row close together, of the other far apart: Welch's test (unpooled,
    ~2 degrees of freedom) and Student's pooled test (4) give different p, here on both sides
    of 0.05; the table's must be Welch's, from its formula."""
    from scipy import stats as scipy_stats

    from hintkd.report import welch_p
    tight, spread = [90.0, 90.1, 90.2], [91.0, 92.5, 94.0]
    pooled = scipy_stats.ttest_ind(tight, spread, equal_var=True).pvalue
    assert welch_p(tight, spread) == pytest.approx(welch_by_hand(tight, spread), rel=1e-9)
    assert welch_p(tight, spread) > 0.1 and pooled < 0.06  # 0.113 against 0.051
    assert welch_p(spread, tight) == pytest.approx(welch_p(tight, spread), rel=1e-12)  # two-sided


def assert_statistics_by_hand(folder, printed=True):
    """A report's Avg., Std. (sample, n - 1) and vs.-next p recomputed by hand from its own
    net values, in table.csv and (printed) in table.md as shown; returns the rows checked."""
    rows = list(csv.DictReader(open(folder / "table.csv")))
    order = [m for m in dict.fromkeys(r["method"] for r in rows if r["net"] == "avg")]
    nets = {m: [float(r["ours_final"]) for r in rows if r["method"] == m and r["net"] in ("1", "2", "3")]
            for m in order}
    value = {(r["method"], r["net"]): r for r in rows}
    table = (folder / "table.md").read_text()
    for method, following in zip(order, order[1:] + [None]):
        values = nets[method]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        assert float(value[method, "avg"]["ours_final"]) == pytest.approx(mean, abs=1e-4), method
        assert float(value[method, "std"]["ours_final"]) == pytest.approx(std, abs=1e-4), method
        line = next(line for line in table.splitlines() if line.startswith(f"| {value[method, 'avg']['label']} |"))
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if printed:
            assert cells[4] == f"{mean:.2f}" and cells[7] == f"{std:.2f}", line
        if following and (std or statistics.stdev(nets[following])):
            p = welch_by_hand(values, nets[following])
            assert float(value[method, "avg"]["welch_p_vs_next"]) == pytest.approx(p, abs=1e-4), method
            assert cells[-1].startswith(f"p={p:.3f}" if p >= 0.001 else "p<0.001"), line
        elif not following:
            assert cells[-1] == "" and value[method, "avg"]["welch_p_vs_next"] == ""
    return order


@pytest.mark.parametrize("kept", TABLE1_STUDIES, ids=lambda folder: folder.name)
def test_the_kept_tables_avg_std_and_p_are_what_their_nets_give(kept):
    """Each kept study's statistics from its own Nets 1-3, in the CSV and as printed."""
    assert len(assert_statistics_by_hand(kept)) == 4
