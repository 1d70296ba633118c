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
if [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/slurmd ] || [ ! -x /usr/sbin/munged ]; then
  sudo=; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
cd "$ROOT"
# -rs: every skipped test says why (a build or a tool this machine lacks).
exec /usr/bin/python3 -m pytest -p no:cacheprovider -rs "$@" tests
