#!/usr/bin/env bash
# The test suite, on real Caffe: installs what is missing (Debian packages, the
# fast CPU build, the stock one it is compared with and the fast build on oneDNN
# 3.2 (HINTKD_ONEDNN=3.2, compared too), and Slurm with munge for
# tests/test_slurm.py's one-node cluster), then runs pytest under Debian's python3
# (pycaffe's interpreter).
#   tests/run.sh [pytest arguments]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/engine/install_caffe.sh" >/dev/null
"$ROOT/engine/install_caffe.sh" --stock >/dev/null
HINTKD_ONEDNN=3.2 "$ROOT/engine/install_caffe.sh" >/dev/null
if [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/slurmd ] || [ ! -x /usr/sbin/munged ]; then
  sudo=; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
cd "$ROOT"
# Real runs leave real files: a run of the suite keeps about 2 GB under the temporary
# folder (1.9 GB measured), and pytest keeps the last three runs' folders. Said here
# rather than as failures in every fixture when the disk fills.
tmp=${TMPDIR:-/tmp} need_gb=6
free_gb=$(df -Pk "$tmp" | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "$free_gb" -lt "$need_gb" ]; then
  echo "tests/run.sh: $free_gb GB free in $tmp, the suite needs $need_gb GB (old runs' folders: $tmp/pytest-of-$(id -un))" >&2
  exit 1
fi
# -rs: every skipped test says why (a build or a tool this machine lacks).
exec /usr/bin/python3 -m pytest -p no:cacheprovider -rs "$@" tests
