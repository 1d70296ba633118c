"""The README and docs/: short enough to lead, links that resolve, and numbers that are
what the commands printed (analysis/measured.py), never edited by hand."""
import copy
import csv
import json
import re
import statistics

import pytest

from conftest import REPO, TABLE1_STUDIES
from analysis import measured

DOCUMENTS = measured.DOCUMENTS  # README.md and docs/*.md


def test_the_readme_leads_and_every_link_resolves():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#]+)\)", document.read_text()):
            if not target.startswith("http"):
                assert (document.parent / target).exists(), f"{document.name} links to {target}, which is not there"


def test_every_quoted_block_is_what_the_measurements_render():
    results = json.loads(measured.RESULTS.read_text())
    assert measured.stale_blocks(results) == []
    quoted = {m.group("name") for d in DOCUMENTS for m in measured.BLOCK.finditer(d.read_text())}
    assert quoted == set(measured.render(results)), "a rendered block is quoted nowhere, or a quote has no block"
    changed = copy.deepcopy(results)
    changed["main_job"]["seconds"] += 7  # a number that no longer matches what the README quotes
    assert ("README.md", "main-job") in {(str(d), n) for d, n in measured.stale_blocks(changed)}


TABLE1_ROWS = ("student", "kd", "hint-kd", "hint-kd+", "proposed", "teacher")  # the README's rows, in order


def kept_nets(kept):
    """{method: its nets' P_c} from a kept study's own table.csv."""
    rows = list(csv.DictReader(open(kept / "table.csv")))
    return {method: [float(r["ours_final"]) for r in rows if r["method"] == method and r["net"] not in ("avg", "std")]
            for method in TABLE1_ROWS}


def markdown_rows(text, header):
    """The cells of each row of the markdown table that starts with `header`."""
    lines = text[text.index(header):].splitlines()[2:]
    return [[c.strip() for c in line.split("|")[1:-1]] for line in lines[:lines.index("")] if line.startswith("|")]


def assert_avg_and_std(cells, values, where):
    """An Avg. cell and the Std. cell after it, as a row of nets (or a net alone) shows them."""
    mean = f"{statistics.mean(values):.2f}"
    if len(values) == 3:
        assert cells == [mean, f"{statistics.stdev(values):.2f}"], (where, cells)
    else:
        assert cells == [f"{mean} (one net)", "-"], (where, cells)


def test_the_readme_quotes_the_kept_studies():
    """The README's Table 1 at 1/16 holds each kept study's own averages and spreads, in its
    own columns (26 -> 14, then 14 -> 8) and rows."""
    rows = markdown_rows((REPO / "README.md").read_text(), "| Method | 26 -> 14 | Std. | 14 -> 8 | Std. |")
    assert len(rows) == len(TABLE1_ROWS)
    for column, kept in zip((1, 3), TABLE1_STUDIES):
        for cells, (method, values) in zip(rows, kept_nets(kept).items()):
            assert_avg_and_std(cells[column:column + 2], values, (kept.name, method))


def test_the_readme_and_own_nets_quote_the_kept_study_of_bvlcs_nets():
    """The study of BVLC's nets: the README's averages and docs/own-nets.md's nets are the kept CSV's."""
    kept = REPO / "analysis" / "studies" / "own-nets-cifar10_full-to-cifar10_quick"
    rows = list(csv.DictReader(open(kept / "table.csv")))
    readme, own_nets = ((REPO / name).read_text() for name in ("README.md", "docs/own-nets.md"))
    methods = {r["method"] for r in rows}
    assert len(methods) == 4
    for method in methods:
        values = [float(r["final"]) for r in rows if r["method"] == method and r["net"] not in ("avg", "std")]
        numbers = f"| {statistics.mean(values):.2f} | {statistics.stdev(values):.2f} |"
        assert numbers in readme, f"{method}: {numbers}"
        assert "| " + " | ".join(f"{v:.2f}" for v in values) + " " + numbers in own_nets, method


def kind_of_build(engine_line):
    """The engine line without its recipe hash: which build, not which code."""
    return re.sub(r"(caffe-[\d.]+-\w+)-[0-9a-f]+", r"\1", engine_line)


def test_the_main_job_gives_the_accuracies_the_readme_quotes(tmp_path):
    """Same seed, same thread count, same build: the same accuracies, bit for bit. On
    another CPU or thread count float32 sums run in another order, so only there. On
    the same CPU a build of the same kind from other code (an engine patch changed since
    the README was measured) is a README to measure again, not a reason to skip."""
    results = json.loads(measured.RESULTS.read_text())
    recorded, here = results["machine"], measured.machine()
    if any(here[key] != recorded.get(key) for key in ("cpu", "cpu_id", "cores", "threads")) or \
            kind_of_build(here["engine"]) != kind_of_build(recorded["engine"]):
        pytest.skip(f"measured on another machine or engine ({recorded['cpu']}, "
                    f"{recorded['threads']} threads, {recorded['engine']})")
    assert here["engine"] == recorded["engine"], \
        "the README's numbers were measured with this kind of build from other code: run analysis/measured.py"
    measured.run_stages(measured.MAIN_JOB, tmp_path)
    assert measured.main_job_accuracies(tmp_path) == results["main_job"]["accuracy"], \
        "the main job's accuracies changed: run analysis/measured.py and commit what it writes"


def test_the_check_command_names_a_stale_block(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    text = (REPO / "README.md").read_text()
    edited = text.replace(" on the 300 digits test images", " on the 300 digits test images, a sentence added by hand", 1)
    assert edited != text
    readme.write_text(edited)
    monkeypatch.setattr(measured, "DOCUMENTS", [readme])
    monkeypatch.setattr(measured, "ROOT", tmp_path)
    assert measured.main(["--check"]) == 1


def test_the_two_depths_in_the_study_are_the_kept_csvs():
    """docs/study-table1.md's side-by-side table and the differences and p-values its text
    quotes: each recomputed from the kept studies' own Nets 1-3 (Welch's test as the tables
    carry it)."""
    from hintkd.report import welch_p
    text = (REPO / "docs" / "study-table1.md").read_text()
    rows = markdown_rows(text, "| Method | 26 -> 14: Avg. | Std. | vs. next row | 14 -> 8: Avg. |")
    assert len(rows) == len(TABLE1_ROWS)
    for column, kept in zip((1, 4), TABLE1_STUDIES):
        nets = kept_nets(kept)
        for i, (cells, method) in enumerate(zip(rows, TABLE1_ROWS)):
            values = nets[method]
            assert_avg_and_std(cells[column:column + 2], values, (kept.name, method))
            following = TABLE1_ROWS[i + 1] if method in ("kd", "hint-kd", "hint-kd+") else None
            assert cells[column + 2] == (f"p={welch_p(values, nets[following]):.3f}" if following else ""), cells
        for better, worse, form in (("hint-kd", "kd", "+{d:.2f} (p = {p:.3f})"),
                                    ("hint-kd+", "kd", "+{d:.2f} (p = {p:.3f})"),
                                    ("proposed", "kd", "+{d:.2f} (p = {p:.3f})"),
                                    ("proposed", "hint-kd", "+{d:.2f}, p = {p:.3f}"),
                                    ("hint-kd+", "hint-kd", "+{d:.2f}, p = {p:.3f}")):
            d = statistics.mean(nets[better]) - statistics.mean(nets[worse])
            quoted = form.format(d=d, p=welch_p(nets[better], nets[worse]))
            assert quoted in " ".join(text.split()), (kept.name, better, worse, quoted)
