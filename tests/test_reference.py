"""The reference band: on any machine, the method tests' short runs (every method, digits,
ResNet-14 -> 8, 60 iterations a stage) give the numbers measured across the ways a
machine can sum, within the room argued below.

tests/reference_band.json holds what analysis/reference_band.py measured: the same runs
under every configuration that sums floats in another order, as another CPU model does
(the fast build on every core and on 1 thread, oneDNN held to its AVX2 and to its SSE4.1
kernels, the portable build without -march=native, the stock build), on each CPU model
it was run on. A number outside the band, widened by its room, says the method trained
differently, not that the machine summed differently.
"""
import json

import pytest

from analysis import reference_band
from conftest import REPO, SCALE, run

RUN_STAGES = str(REPO / "run_stages.sh")
BAND = json.loads(reference_band.BAND.read_text())


def measured(stage, kind, name):
    """Every value the band holds for one number of one stage, over CPU models and configurations."""
    return [runs[stage][kind][name] for cpu in BAND.values() for runs in cpu["runs"].values()
            if name in runs.get(stage, {}).get(kind, {})]


def room(values):
    """How far outside the measured values a number may lie: the values' own spread again on
    each side, and at least FLOOR of their size.

    Where a stage starts from weights that do not depend on the machine (a teacher's or a
    student's random initialization from its seed), its iteration-0 losses agreed to the 5
    digits Caffe prints under every configuration. Every weight trained on the way to a
    stage makes its numbers depend on the order of the sums: iteration 0 of a stage handed a
    trained teacher spread by up to 11% (a hint loss, the teacher's features being sensitive
    to its last bits), and after 60 iterations at a learning rate of 0.1 the training and
    test losses by up to 90% and a net's accuracy by up to 11 points. Another CPU sums in yet
    another order, as the six configurations do among themselves, so its numbers may fall
    outside the measured ones by as much as they spread among themselves: the spread is
    added on each side. FLOOR covers the last printed digits (another exp or log in the C
    library) where the measured values agreed exactly."""
    return (max(values) - min(values)) + FLOOR * max(abs(v) for v in values)


FLOOR = 1e-3


@pytest.mark.parametrize("method", reference_band.METHODS)
def test_every_method_trains_within_the_reference_band(methods_out, method):
    run([RUN_STAGES, "digits", "14", "8", method, "--scale", SCALE, "--out", str(methods_out)])
    stages = sorted(p.parent for p in (methods_out / "digits").glob(f"{method}-*/*/summary.json"))
    stages += list((methods_out / "digits").glob(f"teacher-*scale{SCALE}"))
    assert stages
    outside = []
    for folder in stages:
        stage = str(folder.relative_to(methods_out / "digits"))
        for kind, numbers in reference_band.stage_numbers(folder).items():
            for name, value in numbers.items():
                values = measured(stage, kind, name)
                assert values, f"{stage} {kind} {name}: not in the band (run analysis/reference_band.py)"
                slack = room(values)
                if not min(values) - slack <= value <= max(values) + slack:
                    outside.append(f"{stage} {kind} {name} = {value:.6g}, band {min(values):.6g} .. "
                                   f"{max(values):.6g} +- {slack:.3g}")
    assert not outside, "\n".join(outside)
