#!/usr/bin/env bash
# The study of docs/own-nets.md ("What BVLC's nets showed"), from the repository's root:
#   analysis/studies/own-nets-cifar10_full-to-cifar10_quick/run.sh [OUT]   (default: ~/runs/own-nets-study)
# BVLC's cifar10_full, trained once on BVLC's full schedule at 1/5 (14,000 iterations), is handed to
# every method with --teacher-weights; every student stage follows BVLC's quick schedule at 0.4
# (2,000 iterations) with clip_gradients 10; the student alone as seeds 1-3. Finished stages are
# kept: run it again to resume. Ends with the table (OUT/table/table.md), as kept here.
set -eu -o pipefail
OUT=${1:-$HOME/runs/own-nets-study}
N=tests/nets/bvlc_cifar10
T=$N/cifar10_full_train_test.prototxt
S=$N/cifar10_quick_train_test.prototxt
SOURCE=(--source ../shared/data/cifar10-jpeg.tar.gz)
./run_stages.sh cifar10 $T $S teacher --solver $N/cifar10_full_70000_solver.prototxt --scale 0.2 "${SOURCE[@]}" --out "$OUT"
W=$(ls -d "$OUT"/cifar10/teacher-cifar10_full_train_test-*-scale0.2)/final.caffemodel
STUDENT=(--solver $N/cifar10_quick_5000_clip10_solver.prototxt --scale 0.4 "${SOURCE[@]}" --out "$OUT")
ROWS=()
row() {  # run_stages.sh ARGS..., its run folder kept as a row of the table
  local printed
  printed=$(./run_stages.sh "$@" | tee /dev/stderr)
  ROWS+=("$(dirname "$(sed -n 's/^run summary: //p' <<< "$printed" | tail -1)")")
}
for seed in 1 2 3; do
  row cifar10 $T $S student --seed $seed "${STUDENT[@]}"
done
HINTED=(--teacher-weights "$W" --hint-lr 1e-8 "${STUDENT[@]}")
row cifar10 $T $S kd "${HINTED[@]}"
row cifar10 $T $S hint-kd --hints pool2:pool2 "${HINTED[@]}"
row cifar10 $T $S proposed --hints pool1:pool1,pool2:pool2,pool3:pool3 "${HINTED[@]}"
analysis/compare_runs.py "${ROWS[@]}" --out "$OUT/table" \
    --title "BVLC cifar10_full -> cifar10_quick on CIFAR-10, clip_gradients 10"
