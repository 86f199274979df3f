#!/usr/bin/env bash
# The layer benchmark on an older commit and on this tree, one after the other on the same device machine, so
# that a figure that moves between them is attributed to the code and not to the machine.
#
#   git archive OLD_COMMIT | tar -x -C .old        # here, once (.old is git-ignored via .git/info/exclude)
#   bash bench/gpu_ab_commit.sh .old 1,2,4         # on the device (carry [".whl", ".old"]), after `gpu_check.sh build`
#
# Results under $OUT: ab-old.json, ab-new.json (pytest-benchmark) and ab.txt (both tables, graph and eager clocks).
set -u
OUT=${OUT:-/tmp/heteromoe-gpu-check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
[ -d .whl/site ] && export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}
old=$1
batches=${2:-1,2,4}
here=$PWD
# the older tree's benchmark may predate HETEROMOE_BENCH_BATCHES: set its batch list in its copy
sed -i "s/^BATCHES = .*/BATCHES = [$batches]/" "$old/bench/bench_gpu_layer.py"
(cd "$old" && HETEROMOE_CUDA_ARCHS=90 python3 setup.py build_ext --inplace > "$OUT/ab-old-build.log" 2>&1) \
  || { tail -30 "$OUT/ab-old-build.log"; exit 1; }
ls "$old"/heteromoe/_cuda*.so > /dev/null || { echo "the older tree has no _cuda extension"; exit 1; }
for side in new old; do
  dir=$here; [ "$side" = old ] && dir=$old
  (cd "$dir" && HETEROMOE_BENCH_BATCHES=$batches python3 -m pytest -q -p no:cacheprovider bench/bench_gpu_layer.py \
      --benchmark-json "$OUT/ab-$side.json" > "$OUT/ab-$side.log" 2>&1) || tail -20 "$OUT/ab-$side.log"
  python3 -c "import sys; sys.path.insert(0, '$dir'); import heteromoe; print('$side tree:', heteromoe.__file__)"
done
for side in old new; do
  echo "== $side"
  python3 bench/show_layer_results.py "$OUT/ab-$side.json"
done | tee "$OUT/ab.txt"
