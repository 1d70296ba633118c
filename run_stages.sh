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
if [ "${1:-}" = reproduce ]; then  # one table or figure: its runs through this script, then the report
  shift
  "$ROOT/engine/install_caffe.sh" >/dev/null
  exec "$PYTHON" "$ROOT/analysis/reproduce.py" "$@"
fi
[ $# -ge 4 ] || { echo "run_stages.sh: expected DATASET TEACHER_DEPTH STUDENT_DEPTH METHOD" >&2; usage 2; }
dataset=$1 teacher_depth=$2 student_depth=$3 method=$4
shift 4
out=${HINTKD_OUT:-runs} source="" device=() plan_options=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) device=() ;;
    --gpu) [[ ${2:-} =~ ^[0-9]+(,[0-9]+)+$ ]] && die "--gpu $2: multi-GPU data parallel is not available in this Caffe (no NCCL; see README 'On a GPU'); give one device"
           [[ ${2:-} =~ ^[0-9]+$ ]] || die "--gpu needs a device number"; device=(--gpu "$2"); shift ;;
    --quick|--regressor|--tau-squared) plan_options+=("$1") ;;
    --source) [ $# -ge 2 ] || die "--source needs a path"; source=$2; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; out=$2; shift ;;
    --scale|--seed|--nets|--teacher-widths|--student-widths|--shortcut|--hints|--hint-weights|--step-iterations|--tau|--kd-lambda)
      [ $# -ge 2 ] || die "$1 needs a value"; plan_options+=("$1" "$2"); shift ;;
    -h|--help) usage ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done

# 1. Caffe, built once per machine into a shared prefix: the CUDA build for a GPU.
[ ${#device[@]} -gt 0 ] && export HINTKD_CAFFE_VARIANT=cuda
"$ROOT/engine/install_caffe.sh" >/dev/null

# 2. One driver per output folder.
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec 8>>"$out/.driver.lock"
flock -n 8 || die "another run_stages.sh is using $out ($(cat "$out/.driver.pid" 2>/dev/null || echo "pid unknown")); wait for it or choose another --out"
echo "$$" > "$out/.driver.pid"

# 3. Data, prepared once per output folder.
"$PYTHON" "$ROOT/data_prep/prepare.py" "$dataset" --out "$out/data/$dataset" ${source:+--source "$source"}

# 4. The method's stages, in order, each from what it starts with.
run=("$dataset" "$teacher_depth" "$student_depth" "$method" --data "$out/data/$dataset" --out "$out" "${plan_options[@]}")
mapfile -t stages < <("$PYTHON" "$ROOT/generate.py" plan "${run[@]}")
[ ${#stages[@]} -gt 0 ] || die "no stages planned for '$method' (see the message above)"
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
