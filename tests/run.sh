#!/usr/bin/env bash
# The test suite, on real Caffe: installs what is missing (Debian packages, the
# fast CPU build and the stock one it is compared with, and Slurm with munge for
# tests/test_slurm.py's one-node cluster), then runs pytest under Debian's python3
# (pycaffe's interpreter).
#   tests/run.sh [pytest arguments]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/engine/install_caffe.sh" >/dev/null
"$ROOT/engine/install_caffe.sh" --stock >/dev/null
command -v slurmctld >/dev/null && command -v munged >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
cd "$ROOT"
# -rs: every skipped test says why (a build or a tool this machine lacks).
exec /usr/bin/python3 -m pytest -p no:cacheprovider -rs "$@" tests
