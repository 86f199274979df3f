#!/usr/bin/env bash
# The GPU-execution measurements on a device machine, in stages, so that few device calls run them all.
#
#   bash bench/gpu_check.sh STAGE [STAGE ...]      results under $OUT (the device machine's return folder)
#
# Stages (a device call has 10 minutes: `build tests layer` fit in one, `host generate ab` in another):
#   build     the extension for sm_90 (HETEROMOE_CUDA_ARCHS=90), with the carried OR-Tools wheels if present
#   tests     python -m pytest -m gpu tests                            -> $OUT/pytest-gpu.log
#   layer     bench/bench_gpu_layer.py (pytest-benchmark JSON)         -> $OUT/gpu-layer.json, gpu-layer.txt
#   host      bench/gpu_host_time.py, batches 1,2,4,16,256,1           -> $OUT/gpu-host-time.json
#   generate  bench/gpu_generate.py, bf16 and fp32, batch 1 and 16     -> $OUT/generate-bf16.json, -fp32.json
#   ab        one-token combine for every shape (HETEROMOE_GEMV_COMBINE=2) vs the default rule, batch 1, both
#             layers, graph clock                                       -> $OUT/ab-combine.txt
# Each stage's output is also printed (tails), since only a few files come back from a device call.
set -u
OUT=${OUT:-/tmp/heteromoe-gpu-check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
# each device call may be a fresh machine: name .whl in carry and run `build` first in every call
[ -d .whl/site ] && export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}

stage_build() {
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .whl/site .whl/*.whl
    case ":${PYTHONPATH:-}:" in *":$PWD/.whl/site:"*) ;; *) export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH} ;; esac
  fi
  HETEROMOE_CUDA_ARCHS=90 python3 -m pip install -q -e . --no-build-isolation --no-deps > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; return 1; }
  python3 -c "from heteromoe import kernels; print('cuda kernels:', kernels.HAS_CUDA_KERNELS, kernels.cuda_load_error)"
}

stage_tests() {
  python3 -m pytest -q -m gpu tests -rs > "$OUT/pytest-gpu.log" 2>&1
  local rc=$?
  grep -E "FAILED|ERROR|passed|failed" "$OUT/pytest-gpu.log" | tail -15
  return $rc
}

stage_layer() {
  python3 -m pytest -q bench/bench_gpu_layer.py --benchmark-json "$OUT/gpu-layer.json" > "$OUT/gpu-layer.log" 2>&1
  local rc=$?
  python3 bench/show_layer_results.py "$OUT/gpu-layer.json" | tee "$OUT/gpu-layer.txt" | grep -E "gpu-only|device" | grep graph
  return $rc
}

stage_host() {
  python3 bench/gpu_host_time.py --batches 1,2,4,16,256,1 --json "$OUT/gpu-host-time.json"
}

stage_generate() {
  python3 bench/gpu_generate.py --batch 1,16 --json "$OUT/generate-bf16.json" > "$OUT/generate-bf16.log" 2>&1 || tail -20 "$OUT/generate-bf16.log"
  python3 bench/gpu_generate.py --batch 1,16 --dtype fp32 --json "$OUT/generate-fp32.json" > "$OUT/generate-fp32.log" 2>&1 || tail -20 "$OUT/generate-fp32.log"
  python3 - "$OUT" <<'EOF'
import json, sys
for dtype in ("bf16", "fp32"):
    try:
        data = json.load(open(f"{sys.argv[1]}/generate-{dtype}.json"))
    except OSError:
        continue
    for rec in data["records"]:
        for name, r in rec.items():
            if isinstance(r, dict) and "tokens_identical" in r:
                print(dtype, rec["batch"], name, "identical" if r["tokens_identical"] else "DIFFER",
                      f"{r['s_per_token'] * 1e3:.2f} ms/token")
EOF
}

stage_ab() {
  local sel="gpu_only and 1-graph-mma"
  for mode in 1 2; do
    echo "HETEROMOE_GEMV_COMBINE=$mode"
    HETEROMOE_GEMV_COMBINE=$mode python3 -m pytest -q bench/bench_gpu_layer.py -k "$sel" \
      --benchmark-json "$OUT/ab-combine-$mode.json" > "$OUT/ab-combine-$mode.log" 2>&1
    python3 bench/show_layer_results.py "$OUT/ab-combine-$mode.json"
  done | tee "$OUT/ab-combine.txt"
  rm -f "$OUT"/ab-combine-*.json
}

status=0
for stage in "$@"; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case $stage in
    build|tests|layer|host|generate|ab) "stage_$stage" || status=1 ;;
    *) echo "unknown stage '$stage' (known: build tests layer host generate ab)"; exit 2 ;;
  esac
done
exit $status
