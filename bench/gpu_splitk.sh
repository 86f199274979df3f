#!/usr/bin/env bash
# Split-K of the down projection on a GPU, in one device call on a fresh H100 / H200 (sized for 7 minutes: the
# build, then stage timeouts of 90 s for the tests and 150 s + 60 s for the two sweeps):
#
#   bash bench/gpu_splitk.sh          results under $OUT (the device machine's return folder)
#
# Stages (each one's failure is printed, and the later stages and the table still run):
#   build   the extension for sm_90 with the carried OR-Tools wheels (bench/gpu_check.sh build) -> $OUT/build.log
#   tests   python -m pytest -m gpu tests/kernels (the split kernels against the reference, the kernels' own
#           GPU tests)                                                         -> $OUT/pytest-splitk.log
#   sweep   bench/bench_gpu_layer.py, graph clock: transformers' grouped_mm, and gpu-only with the down
#           projection cut into S = 1 2 3 4 6 8 K ranges (HETEROMOE_BENCH_SPLIT_K; SPLITS overrides the list),
#           Qwen3-30B-A3B- and Mixtral-8x7B-shaped layers, batch 1 2 4 16 64 256
#           (one pytest process per shape)                                     -> $OUT/gpu-splitk-<model>.json, .log
#   (SKIP_BUILD=1 / SKIP_TESTS=1 leave out the first two stages when an earlier command of the call ran them)
#   table   bench/show_splitk_results.py on the sweep (printed last)           -> $OUT/gpu-splitk.txt
# S = 1 is the default path (no split: Mixtral above 4 tokens on grouped_mm + GEMV); with S >= 2
# the Mixtral layer's down projection has enough warps for the tensor-core kernel. Qwen3's rows (K = 768) are
# never split: its columns must not move.
set -u
OUT=${OUT:-/tmp/heteromoe-gpu-splitk}
SPLITS=${SPLITS:-1,2,3,4,6,8}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
[ -d .whl/site ] && export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}
status=0
say() { echo "== $1 $(date -u +%H:%M:%S)"; }

if [ "${SKIP_BUILD:-0}" = 1 ]; then  # built by an earlier stage of the same device call
  say "build skipped (SKIP_BUILD=1)"
else
  say build
  if ! bash bench/gpu_check.sh build; then echo "build FAILED (tail of $OUT/build.log above)"; status=1; fi
fi
if [ -d .whl/site ]; then  # the build stage ran in a child shell: its PYTHONPATH did not come back
  case ":${PYTHONPATH:-}:" in *":$PWD/.whl/site:"*) ;; *) export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH} ;; esac
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader 2>&1 | head -2

if [ "${SKIP_TESTS:-0}" = 1 ]; then say "tests skipped (SKIP_TESTS=1)"; else
say tests
timeout 90 python3 -m pytest -q -m gpu tests/kernels -rs -p no:cacheprovider > "$OUT/pytest-splitk.log" 2>&1
rc=$?
grep -E "FAILED|ERROR|passed|failed|Timeout" "$OUT/pytest-splitk.log" | tail -15
[ $rc -eq 0 ] || { echo "tests FAILED (rc $rc; $OUT/pytest-splitk.log)"; tail -30 "$OUT/pytest-splitk.log"; status=1; }
fi

# one pytest process per layer shape (Mixtral first), so a timeout loses one shape's JSON, not both
for model in mixtral-8x7b qwen3-30b-a3b; do
  say "sweep $model S=$SPLITS"
  [ $model = mixtral-8x7b ] && limit=150 || limit=60
  HETEROMOE_BENCH_SPLIT_K=$SPLITS timeout $limit python3 -m pytest -q bench/bench_gpu_layer.py -p no:cacheprovider \
    -k "$model and (test_heteromoe_gpu_only_split_k or (test_transformers_grouped_mm and graph))" \
    --benchmark-json "$OUT/gpu-splitk-$model.json" > "$OUT/gpu-splitk-$model.log" 2>&1
  rc=$?
  grep -E "passed|failed|FAILED|ERROR" "$OUT/gpu-splitk-$model.log" | tail -8
  if [ $rc -ne 0 ]; then
    echo "sweep $model FAILED (rc $rc; $OUT/gpu-splitk-$model.log)"
    grep -E "^E " "$OUT/gpu-splitk-$model.log" | head -12
    status=1
  fi
done

say table
jsons=$(ls "$OUT"/gpu-splitk-*.json 2>/dev/null)
if [ -n "$jsons" ]; then
  python3 bench/show_splitk_results.py $jsons | tee "$OUT/gpu-splitk.txt"
else
  echo "no sweep JSON (a timed-out pytest writes none): see $OUT/gpu-splitk-*.log"; status=1
fi
exit $status
