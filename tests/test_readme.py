"""The README and docs/: short enough to lead, links that resolve, and numbers that are
what the commands printed (analysis/measured.py), never edited by hand."""
import copy
import csv
import json
import re
import statistics

import pytest

from conftest import REPO
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


def test_the_readme_quotes_the_kept_study():
    """The README's short Table 1 at 1/16 holds the averages of the kept study's own CSV."""
    kept = REPO / "analysis" / "studies" / "table1-cifar10-resnet14to8-scale0.0625"
    rows = list(csv.DictReader(open(kept / "table.csv")))
    readme = (REPO / "README.md").read_text()
    for method in ("kd", "hint-kd", "hint-kd+", "proposed", "student", "teacher"):
        values = [float(r["ours_final"]) for r in rows if r["method"] == method and r["net"] not in ("avg", "std")]
        assert f"| {statistics.mean(values):.2f}" in readme, f"{method}: average {statistics.mean(values):.2f}"


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


def same_machine(recorded):
    here = measured.machine()
    return all(here[key] == recorded[key] for key in ("cpu", "cores", "threads", "engine"))


def test_the_main_job_gives_the_accuracies_the_readme_quotes(tmp_path):
    """Same seed, same thread count, same build: the same accuracies, bit for bit. On
    another CPU or thread count float32 sums run in another order, so only here."""
    recorded = json.loads(measured.RESULTS.read_text())
    if not same_machine(recorded["machine"]):
        pytest.skip(f"measured on another machine or engine ({recorded['machine']['cpu']}, "
                    f"{recorded['machine']['threads']} threads, {recorded['machine']['engine']})")
    measured.run_stages(measured.MAIN_JOB, tmp_path)
    assert measured.main_job_accuracies(tmp_path) == recorded["main_job"]["accuracy"], \
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
