#!/usr/bin/env bash
# The test suite, on real Caffe: installs what is missing (Debian packages, the
# fast CPU build and the stock one it is compared with), then runs pytest under
# Debian's python3 (pycaffe's interpreter).
#   tests/run.sh [pytest arguments]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/engine/install_caffe.sh" >/dev/null
"$ROOT/engine/install_caffe.sh" --stock >/dev/null
cd "$ROOT"
# -rs: every skipped test says why (a build or a tool this machine lacks).
exec /usr/bin/python3 -m pytest -p no:cacheprovider -rs "$@" tests
