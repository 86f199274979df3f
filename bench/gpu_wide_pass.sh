#!/usr/bin/env bash
# The tensor-core kernel's wide pass (48 / 64 / 128 tokens per reading of an expert's weights) on a GPU, in one device
# call on an H100 / H200 (after the build: stage timeouts of 90 s for the tests, 120 s for the Mixtral sweep and
# 75 s for the Qwen3 one, so at most 4 min 45 s; about 2 to 3 minutes expected):
#
#   bash bench/gpu_wide_pass.sh                       results under $OUT (the device machine's return folder)
#   SKIP_BUILD=1 bash bench/gpu_wide_pass.sh          after `bash bench/gpu_check.sh build` in the same call
#
# Stages (each one's failure is printed, and the later stages and the table still run):
#   build   the extension for sm_90 with the carried OR-Tools wheels (bench/gpu_check.sh build) -> $OUT/build.log
#   tests   python -m pytest -m gpu tests/kernels/test_wide_pass.py (the 6-, 8- and 16-tile kernels bit for bit
#           against the 32-token pass, and against the reference)               -> $OUT/pytest-wide-pass.log
#   sweep   bench/bench_gpu_layer.py::test_heteromoe_gpu_only_wide_pass, graph clock, beside transformers'
#           grouped_mm: variants "default" (the shipped path) and P = 4, 6, 8, 16 tiles per pass on the tensor
#           cores (WIDE overrides the list), with the down projection split S = 1, 2 for Mixtral-8x7B
#           (MIXTRAL_SPLITS; any HETEROMOE_SPLIT_K setting, e.g. h100:64), batch 64 and 256; Qwen3-30B-A3B
#           (K = 768: never split) at batch 16, 64, 256; one pytest process per model
#                                                                      -> $OUT/gpu-wide-pass-<model>.json, .log
#   table   bench/show_wide_pass_results.py on the sweep (printed last)   -> $OUT/gpu-wide-pass.txt
set -u
OUT=${OUT:-/tmp/heteromoe-gpu-wide-pass}
WIDE=${WIDE:-default,4,6,8,16}
MIXTRAL_SPLITS=${MIXTRAL_SPLITS:-1,2}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
status=0
say() { echo "== $1 $(date -u +%H:%M:%S)"; }

if [ "${SKIP_BUILD:-0}" = 1 ]; then  # built by an earlier command of the same device call
  say "build skipped (SKIP_BUILD=1)"
else
  say build
  if ! bash bench/gpu_check.sh build; then echo "build FAILED (tail of $OUT/build.log above)"; status=1; fi
fi
if [ -d .whl/site ]; then  # the build ran in a child shell: its PYTHONPATH did not come back
  case ":${PYTHONPATH:-}:" in *":$PWD/.whl/site:"*) ;; *) export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH} ;; esac
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader 2>&1 | head -2

say tests
timeout 90 python3 -m pytest -q -m gpu tests/kernels/test_wide_pass.py -rs -p no:cacheprovider \
  > "$OUT/pytest-wide-pass.log" 2>&1
rc=$?
grep -E "FAILED|ERROR|passed|failed|Timeout" "$OUT/pytest-wide-pass.log" | tail -15
[ $rc -eq 0 ] || { echo "tests FAILED (rc $rc; $OUT/pytest-wide-pass.log)"; tail -30 "$OUT/pytest-wide-pass.log"; status=1; }

# one pytest process per layer shape (Mixtral first), so a timeout loses one shape's JSON, not both
for model in mixtral-8x7b qwen3-30b-a3b; do
  if [ $model = mixtral-8x7b ]; then batches=64,256 splits=$MIXTRAL_SPLITS limit=120
  else batches=16,64,256 splits=1 limit=75; fi
  say "sweep $model batch $batches variants $WIDE splits $splits"
  HETEROMOE_BENCH_BATCHES=$batches HETEROMOE_BENCH_WIDE=$WIDE HETEROMOE_BENCH_WIDE_SPLIT_K=$splits \
    timeout $limit python3 -m pytest -q bench/bench_gpu_layer.py -p no:cacheprovider \
    -k "$model and (test_heteromoe_gpu_only_wide_pass or (test_transformers_grouped_mm and graph))" \
    --benchmark-json "$OUT/gpu-wide-pass-$model.json" > "$OUT/gpu-wide-pass-$model.log" 2>&1
  rc=$?
  grep -E "passed|failed|FAILED|ERROR" "$OUT/gpu-wide-pass-$model.log" | tail -8
  if [ $rc -ne 0 ]; then
    echo "sweep $model FAILED (rc $rc; $OUT/gpu-wide-pass-$model.log)"
    grep -E "^E " "$OUT/gpu-wide-pass-$model.log" | head -12
    status=1
  fi
done

say table
jsons=$(ls "$OUT"/gpu-wide-pass-*.json 2>/dev/null)
if [ -n "$jsons" ]; then
  python3 bench/show_wide_pass_results.py $jsons | tee "$OUT/gpu-wide-pass.txt"
else
  echo "no sweep JSON (a timed-out pytest writes none): see $OUT/gpu-wide-pass-*.log"; status=1
fi
exit $status
