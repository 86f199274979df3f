#!/usr/bin/env bash
# What runs the hot experts off the tensor cores (torch's grouped_mm or the Triton grouped GEMM, and the Triton
# kernel's tiles) on a GPU, in one device call on an H100 / H200 (after the build: stage timeouts of 150 s for
# the tests, 200 s for the Mixtral sweep and 120 s for the Qwen3 one):
#
#   bash bench/gpu_grouped.sh                       results under $OUT (the device machine's return folder)
#   SKIP_BUILD=1 bash bench/gpu_grouped.sh          after `bash bench/gpu_check.sh build` in the same call
#
# Stages (each one's failure is printed, and the later stages and the table still run):
#   build   the extension for sm_90 with the carried OR-Tools wheels (bench/gpu_check.sh build) -> $OUT/build.log
#   tests   python -m pytest -m gpu tests/kernels/test_grouped_triton.py (the kernel against a float64
#           reference, the fused path against the module, eager and graph-replayed) -> $OUT/pytest-grouped.log
#   sweep   bench/bench_gpu_layer.py::test_heteromoe_gpu_only_grouped, graph clock, beside transformers'
#           grouped_mm: VARIANTS (default: the shipped path, grouped_mm, triton with its own tile, and the tiles
#           of TILES), Mixtral-8x7B at MIXTRAL_BATCHES (16,64,256), Qwen3-30B-A3B at QWEN_BATCHES (64,256);
#           one pytest process per model            -> $OUT/gpu-grouped-<model>.json, .log
#   table   bench/show_grouped_results.py on the sweep (printed last)   -> $OUT/gpu-grouped.txt
set -u
OUT=${OUT:-/tmp/heteromoe-gpu-grouped}
TILES=${TILES:-128x64x64w8s4t,64x64x64w4s4,128x64x128w8s3,128x32x64w4s4,256x32x64w8s3}
VARIANTS=${VARIANTS:-default,grouped_mm,triton$(for t in ${TILES//,/ }; do printf ',triton:%s' "$t"; done)}
MIXTRAL_BATCHES=${MIXTRAL_BATCHES:-16,64,256}
QWEN_BATCHES=${QWEN_BATCHES:-64,256}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
status=0
say() { echo "== $1 $(date -u +%H:%M:%S)"; }

if [ "${SKIP_BUILD:-0}" = 1 ]; then
  say "build skipped (SKIP_BUILD=1)"
else
  say build
  if ! bash bench/gpu_check.sh build; then echo "build FAILED (tail of $OUT/build.log above)"; status=1; fi
fi
if [ -d .whl/site ]; then
  case ":${PYTHONPATH:-}:" in *":$PWD/.whl/site:"*) ;; *) export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH} ;; esac
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader 2>&1 | head -2
python3 -c "import triton; print('triton', triton.__version__)"

say tests
timeout 150 python3 -m pytest -q -m gpu tests/kernels/test_grouped_triton.py -rs -p no:cacheprovider \
  > "$OUT/pytest-grouped.log" 2>&1
rc=$?
grep -E "FAILED|ERROR|passed|failed|Timeout" "$OUT/pytest-grouped.log" | tail -15
[ $rc -eq 0 ] || { echo "tests FAILED (rc $rc; $OUT/pytest-grouped.log)"; grep -E "^E " "$OUT/pytest-grouped.log" | head -20; status=1; }

for model in mixtral-8x7b qwen3-30b-a3b; do
  if [ $model = mixtral-8x7b ]; then batches=$MIXTRAL_BATCHES limit=200; else batches=$QWEN_BATCHES limit=120; fi
  say "sweep $model batch $batches variants $VARIANTS"
  HETEROMOE_BENCH_BATCHES=$batches HETEROMOE_BENCH_GROUPED=$VARIANTS \
    timeout $limit python3 -m pytest -q bench/bench_gpu_layer.py -p no:cacheprovider \
    -k "$model and (test_heteromoe_gpu_only_grouped or (test_transformers_grouped_mm and graph))" \
    --benchmark-json "$OUT/gpu-grouped-$model.json" > "$OUT/gpu-grouped-$model.log" 2>&1
  rc=$?
  grep -E "passed|failed|FAILED|ERROR" "$OUT/gpu-grouped-$model.log" | tail -8
  if [ $rc -ne 0 ]; then
    echo "sweep $model FAILED (rc $rc; $OUT/gpu-grouped-$model.log)"
    grep -E "^E " "$OUT/gpu-grouped-$model.log" | head -12
    status=1
  fi
done

say table
jsons=$(ls "$OUT"/gpu-grouped-*.json 2>/dev/null)
if [ -n "$jsons" ]; then
  python3 bench/show_grouped_results.py $jsons | tee "$OUT/gpu-grouped.txt"
else
  echo "no sweep JSON (a timed-out pytest writes none): see $OUT/gpu-grouped-*.log"; status=1
fi
exit $status
