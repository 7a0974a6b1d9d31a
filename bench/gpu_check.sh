#!/usr/bin/env bash
# The whole GPU check in one call, for a lent GPU machine (see ../shared/gpu.md): the test suite
# on CuPy, the CuPy fast-path benchmarks beside the eager path, and the core and training-step
# benchmarks with their report. Everything it prints and writes lands in $OUT.
#
# That machine has no network. Make the wheels it lacks first, here, beside the project:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#       array-api-compat==1.16.0 array-api-strict==2.6.1 tqdm scikit-learn threadpoolctl joblib
# then run it with the device tool: command "bash bench/gpu_check.sh", carry [".whl"].
set -uo pipefail
OUT=${OUT:-/tmp/nnx-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import nnx; b = nnx.get_backend('cupy'); print(b.describe(), b.runtime_versions())"
  python3 -m nnx info
} 2>&1 | tee "$OUT/machine.txt"
NNX_BACKEND=cupy timeout 300 python3 -m pytest -q -p no:cacheprovider tests bench \
    --benchmark-disable 2>&1 | tee "$OUT/tests.log"
timeout 120 python3 -m pytest -q -p no:cacheprovider bench/test_cuda_fastpath.py --benchmark-only \
    --benchmark-json "$OUT/fastpath.json" 2>&1 | tee "$OUT/fastpath.log"
# The report runs from this checkout (bench/report.py; 'python3 -m nnx bench' is the same).
# torch-cuda is measured where torch with CUDA is installed, else skipped with the reason.
timeout 240 python3 bench/report.py --quick --backends numpy,cupy,torch-cuda --out "$OUT/bench" \
    2>&1 | tee "$OUT/bench.log"
