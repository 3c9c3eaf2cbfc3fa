#!/usr/bin/env bash
# The GPU checks of issue #17 in one go, a few minutes on an H100/H200-class GPU:
#   1. the GPU tests (tests/unit/test_cuda.py, marker `gpu`; skipped on machines without CUDA);
#   2. benchmarks/training.py --device cuda: paper preset, batch 512 and 4096, float32 and
#      bf16, the textbook-MMoE yardstick on the same GPU (target: >= 200,000 samples/s at
#      batch 4096 in bf16 and >= 0.8 x the textbook MMoE);
#   3. benchmarks/engine_device.py: the gateway's compiled engine latency, CPU and GPU.
# Results (with the GPU's name) are appended to benchmarks/results/performance.md; the GPU
# test log goes next to it as gpu_tests.log. With $OUT set (the workplace's device runner)
# both are also copied there.
#
# Needs only the core's dependencies (torch with CUDA, numpy, pandas, pyarrow, scipy,
# scikit-learn, safetensors, tqdm, pytest): the services' packages (fastapi, pydantic, ...)
# are not imported. The project need not be installed: the repository is put on PYTHONPATH.
#
#   bash benchmarks/gpu_check.sh                  # everything (~5 min on an H200)
#   QUICK=1 bash benchmarks/gpu_check.sh          # smoke run: tests + tiny benchmarks
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
RESULTS=benchmarks/results/performance.md
LOG=benchmarks/results/gpu_tests.log
THREADS=${THREADS:-8}
status=0

"$PY" - <<'EOF' || exit 2
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (torch %s)" % torch.__version__)
print("gpu_check:", torch.cuda.get_device_name(0), "| torch", torch.__version__,
      "| CUDA", torch.version.cuda, flush=True)
EOF
command -v nvidia-smi >/dev/null && nvidia-smi -L

echo "== 1. GPU tests"
"$PY" -m pytest -p no:cacheprovider -m gpu tests/unit/test_cuda.py \
    -q -rs 2>&1 | tee "$LOG" || status=1

if [ -n "${QUICK:-}" ]; then
    TRAIN=(--rows paper=16384 --repeats 2 --max-seconds 20)
    ENGINE=(--iters 50 --max-seconds 5)
else
    TRAIN=(--rows paper=262144 --repeats 3 --max-seconds 60)
    ENGINE=(--iters 300 --max-seconds 15)
fi

echo "== 2. training throughput on the GPU"
"$PY" benchmarks/training.py --device cuda --presets paper --batch-sizes 512 4096 \
    --precision fp32 bf16 --candidates textbook additive2 additive2-round additive3 \
    --threads "$THREADS" --out "$RESULTS" "${TRAIN[@]}" || status=1

echo "== 3. gateway engine latency, CPU and GPU"
"$PY" benchmarks/engine_device.py --devices cpu cuda --presets small paper \
    --batches 1 100 1000 4096 --threads 1 --out "$RESULTS" "${ENGINE[@]}" || status=1

if [ -n "${OUT:-}" ]; then
    cp "$RESULTS" "$LOG" "$OUT"/ 2>/dev/null || true
fi
echo "gpu_check: exit $status (results in $RESULTS)"
exit $status
