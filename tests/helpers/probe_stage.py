"""Builds a stage's solver as hintkd.train does, loads its initial weights,
optionally takes SGD steps, and saves every blob's data and diff and every
parameter to an .npz file. Run in its own process: BVLC Caffe's DataReader
serves one LMDB source per process, and a second net on the same source in one
process waits forever.

    python3 tests/helpers/probe_stage.py STAGE_DIR OUT.npz [STEPS]
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from hintkd import engine, handoff  # noqa: E402

stage_dir, out, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0
caffe = engine.import_caffe()
caffe.set_mode_cpu()
os.chdir(stage_dir)
solver = caffe.get_solver("solver.prototxt")
handoff.load_initial_weights(solver.net, json.loads((stage_dir / "stage.json").read_text())["init"])
arrays = {f"param:{name}:{i}": blob.data for name, blobs in solver.net.params.items() for i, blob in enumerate(blobs)}
if steps:
    solver.step(steps)
    arrays.update({f"diff:{name}": blob.diff for name, blob in solver.net.blobs.items()})
    arrays.update({f"data:{name}": blob.data for name, blob in solver.net.blobs.items()})
np.savez(out, **arrays)
