#!/usr/bin/env bash
# Runs every stage of a method of the paper, in order, on real Caffe.
#
#   ./run_stages.sh DATASET TEACHER_DEPTH STUDENT_DEPTH METHOD [options]
#   ./run_stages.sh cifar10 26 14 proposed
#   ./run_stages.sh reproduce TARGET [options]   a table or figure of the paper
#                                                (analysis/reproduce.py --help)
#
# Methods: solvers/methods.json. Options:
#   --cpu | --gpu N       device (default: CPU)
#   --quick               every iteration count scaled down for a smoke run
#   --scale F             every iteration count of the paper times F
#   --source PATH         dataset archive or folder on disk (default: download)
#   --out DIR             where data and runs go (default: $HINTKD_OUT or ./runs)
#   --seed N              the weight-initialisation seed (default: 1)
#   --nets K              Stage 2 runs per method (default: 3, the paper's Nets 1-3)
#   --teacher-widths A,B,C / --student-widths A,B,C / --shortcut projection|zero_pad
#   --hints LIST / --hint-weights LIST / --step-iterations LIST / --regressor
#   --tau T / --kd-lambda L / --tau-squared      (see generate.py plan --help)
#
# Finished stages are skipped, an interrupted one resumes from its last
# snapshot; two drivers never share an output folder.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=/usr/bin/python3

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-0}"; }
die() { echo "run_stages.sh: error: $*" >&2; exit 1; }

[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && usage
# 0. Every argument is checked (hintkd/options.py, standard library only) before
#    anything is installed, prepared or written.
if [ "${1:-}" = reproduce ]; then  # one table or figure: its runs through this script, then the report
  shift
  PYTHONPATH="$ROOT" "$PYTHON" -m hintkd.options reproduce "$@" || exit
  "$ROOT/engine/install_caffe.sh" >/dev/null
  exec "$PYTHON" "$ROOT/analysis/reproduce.py" "$@"
fi
parsed=$(PYTHONPATH="$ROOT" "$PYTHON" -m hintkd.options run "$@") || exit
# Sets dataset, teacher_depth, student_depth, method, out, source, gpu, plan_options.
eval "$parsed"
device=()
[ -n "$gpu" ] && device=(--gpu "$gpu")

# 1. Caffe, built once per machine into a shared prefix: the CUDA build for a GPU.
[ ${#device[@]} -gt 0 ] && export HINTKD_CAFFE_VARIANT=cuda
"$ROOT/engine/install_caffe.sh" >/dev/null

# 2. One driver per output folder.
mkdir -p "$out"
exec 8>>"$out/.driver.lock"
flock -n 8 || die "another run_stages.sh is using $out ($(cat "$out/.driver.pid" 2>/dev/null || echo "pid unknown")); wait for it or choose another --out"
echo "$$" > "$out/.driver.pid"

# 3. Data, prepared once per output folder.
"$PYTHON" "$ROOT/data_prep/prepare.py" "$dataset" --out "$out/data/$dataset" ${source:+--source "$source"} || exit

# 4. The method's stages, in order, each from what it starts with.
run=("$dataset" "$teacher_depth" "$student_depth" "$method" --data "$out/data/$dataset" --out "$out" "${plan_options[@]}")
planned=$("$PYTHON" "$ROOT/generate.py" plan "${run[@]}") || exit
mapfile -t stages <<< "$planned"
for stage in "${stages[@]}"; do
  if ! PYTHONPATH="$ROOT" "$PYTHON" -m hintkd.train "$stage" "${device[@]}"; then
    echo "run_stages.sh: stage $stage failed; the end of its Caffe log:" >&2
    tail -n 15 "$stage/caffe.log" >&2 2>/dev/null || true
    exit 1
  fi
done

# 5. One summary for the run, and where every result is.
PYTHONPATH="$ROOT" "$PYTHON" -m hintkd.summary "${stages[@]}"

# 6. The run beside the paper's table for its setting.
PYTHONPATH="$ROOT" "$PYTHON" -m hintkd.report "${run[@]}"
