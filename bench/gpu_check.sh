#!/usr/bin/env bash
# The whole GPU check in one call of at most 8 minutes, for a lent GPU machine (read
# ../shared/gpu.md): a probe of each GPU path (seconds), the suite on CuPy and on JAX's GPU,
# then the benchmarks at H = 256, 1024, 2048 on numpy, cupy, torch-cuda and jax-gpu. It writes
# at most 7 files to $OUT and ends with a summary (the last lines come back even when files
# do not). Without a GPU it reports every GPU step as skipped and finishes in seconds.
#
# The machine has no network and lacks array-api-compat and array-api-strict only: carry
# exactly those (the image's own tqdm, scikit-learn, jax, torch and cupy must not be shadowed):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#       array-api-compat==1.16.0 array-api-strict==2.6.1
# then: device tool, command "bash bench/gpu_check.sh", carry [".whl"].
set -uo pipefail
OUT=${OUT:-/tmp/nnx-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "[FAIL] wheel install"; exit 2; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
# timeout sends SIGINT: pytest then still prints its summary and writes its junit file.
run() { local limit=$1; shift; timeout -s INT -k 5 "$limit" "$@"; }
SUMMARY=()

{   # 1. The machine and the probe: $OUT/check.log
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
    $PY -m nnx info
    run 60 $PY bench/gpu_probe.py
} 2>&1 | tee "$OUT/check.log"
SUMMARY+=("$(grep -E '^\[(ok|FAIL|skip)' "$OUT/check.log")")

# 1: CuPy is usable; 0: no usable CUDA device; anything else: nnx itself does not import
# (a missing wheel, say), which must not read as "no GPU".
has_gpu=$($PY -c "
import nnx
try:
    nnx.get_backend('cupy'); print(1)
except Exception:
    print(0)" 2>/dev/null)
if [ "$has_gpu" != 1 ] && [ "$has_gpu" != 0 ]; then
    SUMMARY+=("[FAIL] nnx does not import with $PY: $($PY -c 'import nnx' 2>&1 | tail -1)")
    echo "== summary ($(find "$OUT" -type f | wc -l) files in $OUT) =="
    printf '%s\n' "${SUMMARY[@]}"
    exit 2
fi
timeout_opt=()
$PY -c "import pytest_timeout" 2> /dev/null && timeout_opt=(-p timeout --timeout 120)

if [ "$has_gpu" = 1 ]; then
    # 2. The suite on CuPy, then on JAX's GPU: $OUT/suite.log, cupy.xml, jax.xml
    NNX_BACKEND=cupy run 150 $PY -m pytest -q -p no:cacheprovider tests "${timeout_opt[@]}" \
        --junitxml "$OUT/cupy.xml" 2>&1 | tee "$OUT/suite.log"
    SUMMARY+=("cupy suite: $(tail -1 "$OUT/suite.log")")
    NNX_BACKEND=jax run 90 $PY -m pytest -q -p no:cacheprovider tests "${timeout_opt[@]}" \
        -k "jax-gpu or not jax" --junitxml "$OUT/jax.xml" 2>&1 | tee -a "$OUT/suite.log"
    SUMMARY+=("jax suite: $(tail -1 "$OUT/suite.log")")
    # 3. The benchmarks at the sizes the targets name: $OUT/bench/{bench.json,bench.md,png}
    run 140 $PY bench/report.py --backends numpy,cupy,torch-cuda,jax-gpu \
        --hidden 256,1024,2048 --train-hidden 256,1024,2048 --max-time 0.2 --min-rounds 3 \
        --out "$OUT/bench" 2>&1 | tail -60
    SUMMARY+=("bench: $(ls "$OUT/bench" 2>/dev/null | tr '\n' ' ')")
else
    SUMMARY+=("[skip] suite on cupy and jax-gpu: no usable CUDA device (see check.log)")
    SUMMARY+=("[skip] GPU benchmarks: no usable CUDA device")
fi

echo "== summary ($(find "$OUT" -type f | wc -l) files in $OUT) =="
printf '%s\n' "${SUMMARY[@]}"
