#!/usr/bin/env bash
# Runs every stage of a method of the paper, in order, on real Caffe.
#
#   ./run_stages.sh DATASET TEACHER STUDENT METHOD [options]   (each net: a depth or a prototxt)
#   ./run_stages.sh cifar10 26 14 proposed
#   ./run_stages.sh reproduce TARGET [options]   a table or figure of the paper
#                                                (analysis/reproduce.py --help)
#
# Methods: solvers/methods.json. Options:
#   --cpu | --gpu N       device (default: CPU)
#   --quick               every iteration count scaled down for a smoke run
#   --scale F             every iteration count of the paper times F
#   --source PATH         dataset archive or folder on disk (default: download)
#   --no-md5              accept a --source that is not the official file (a subset)
#   --out DIR             where data and runs go (default: $HINTKD_OUT or ./runs)
#   --seed N              the weight-initialisation seed (default: 1)
#   --nets K              Stage 2 runs per method (default: 3, the paper's Nets 1-3)
#   --teacher-widths A,B,C / --student-widths A,B,C / --shortcut projection|zero_pad
#   --hints LIST / --hint-weights LIST / --step-iterations LIST / --regressor
#   --tau T / --kd-lambda L / --tau-squared      (see generate.py plan --help)
# Your own nets (docs/own-nets.md): TEACHER and STUDENT as prototxt files,
#   --teacher-weights FILE / --solver FILE / --hint-lr LR / --teacher-logits BLOB / --student-logits BLOB
# How the stages run (hintkd/graph.py: each stage once, after the stages it starts from):
#   --jobs K              K stages at once on this machine (default 1: in order)
#   --status              each stage's state, iterations and time left; trains nothing
#   --slurm               submit them as Slurm jobs (--partition, --time, --gres,
#                         --cpus-per-task, --array-throttle, --sbatch-args, --job-prefix)
#
# Finished stages are skipped, an interrupted one resumes from its last
# snapshot; two processes never train one stage at once (a stage lock), so
# several drivers may share an output folder.
set -euo pipefail
export HINTKD_STARTED=${EPOCHREALTIME/,/.}  # --time-limit counts from here (hintkd/graph.py)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=/usr/bin/python3

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-0}"; }

[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && usage
# 0. Every argument is checked (hintkd/options.py, standard library only) before
#    anything is installed, prepared or written.
if [ "${1:-}" = reproduce ]; then  # one table or figure: its runs through this script, then the report
  shift
  parsed=$(PYTHONPATH="$ROOT" "$PYTHON" -m hintkd.options reproduce "$@") || exit
  [ -n "$parsed" ] || exit 0  # --help
  eval "$parsed"  # sets status and variant
  export HINTKD_CAFFE_VARIANT=$variant
  [ -n "$status" ] || "$ROOT/engine/install_caffe.sh" >/dev/null
  exec "$PYTHON" "$ROOT/analysis/reproduce.py" "$@"
fi
parsed=$(PYTHONPATH="$ROOT" "$PYTHON" -m hintkd.options run "$@") || exit
[ -n "$parsed" ] || exit 0  # --help
# Sets dataset, out, source, no_md5, status and variant (the CUDA build for a GPU, else a CPU build).
eval "$parsed"
export HINTKD_CAFFE_VARIANT=$variant
if [ -z "$status" ]; then
  # 1. Caffe, built once per machine into a shared prefix.
  "$ROOT/engine/install_caffe.sh" >/dev/null
  # 2. The user's own nets, weights, solver and hints read and checked, before any data or write.
  PYTHONPATH="$ROOT" "$PYTHON" -m hintkd.precheck "$@" || exit
  # 3. Data, prepared once per output folder.
  "$PYTHON" "$ROOT/data_prep/prepare.py" "$dataset" --out "$out/data/$dataset" ${source:+--source "$source"} \
    ${no_md5:+--no-md5} || exit
fi

# 4. The method's stages, each after the stages whose weights it starts from, then the
#    run's summary and its place beside the paper's table (or --status, or --slurm).
export PYTHONPATH="$ROOT"
exec "$PYTHON" -m hintkd.graph "$@"
