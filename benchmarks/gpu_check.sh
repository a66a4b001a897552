#!/usr/bin/env bash
# The GPU check (`make gpu-check` runs this; `bash benchmarks/gpu_check.sh` does the same where
# make is missing). Run it in the repository root of a machine with a CUDA GPU, no network, and
# the wheels from `make gpu-wheels` in .whl/. It installs the wheels into $GPU_SITE, then runs,
# each under a time limit so that the whole ends within about $GPU_CHECK_SECONDS seconds:
#   1. the tests marked gpu (tests/test_gpu.py), at most $GPU_TEST_SECONDS s;
#   2. benchmarks/bench_amp.py: attacks under bf16 autocast against fp32, at most $GPU_AMP_SECONDS s;
#   3. benchmarks/bench_gpu.py with the time that is left but $GPU_DDP_SECONDS (it stops itself
#      within its budget);
#   4. benchmarks/bench_ddp_gpu.py: data-parallel training under torchrun on every GPU (on a
#      machine with one GPU, 2 ranks sharing it with gloo), at most $GPU_DDP_SECONDS s.
# Every output is written, as it comes, to $GPU_RESULTS ($OUT when set, else benchmarks/results):
# gpu_env.txt, gpu_tests.txt, bench_amp.txt, bench_gpu.txt, bench_gpu.json, bench_ddp_gpu.txt and
# bench_ddp_gpu.json. All parts run
# even if one fails; the exit status is 1 if any failed, 2 if the check could not start.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

GPU_PYTHON=${GPU_PYTHON:-python3}
GPU_SITE=${GPU_SITE:-/tmp/robustfit-site}
GPU_RESULTS=${GPU_RESULTS:-${OUT:-benchmarks/results}}
GPU_CHECK_SECONDS=${GPU_CHECK_SECONDS:-360}
GPU_TEST_SECONDS=${GPU_TEST_SECONDS:-120}
GPU_AMP_SECONDS=${GPU_AMP_SECONDS:-150}
GPU_DDP_SECONDS=${GPU_DDP_SECONDS:-90}

start=$SECONDS
status=0
shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "gpu-check: no wheels in .whl/: run 'make gpu-wheels' on a machine with network access," \
         "and bring .whl/ along"
    exit 2
fi
if ! "$GPU_PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu-check: $GPU_PYTHON sees no CUDA GPU (torch.cuda.is_available() is False)"
    exit 2
fi
mkdir -p "$GPU_RESULTS"
export PYTHONPATH="$GPU_SITE:$PWD" PYTHONUNBUFFERED=1

echo "== installing ${#wheels[@]} wheels into $GPU_SITE"
"$GPU_PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$GPU_SITE" "${wheels[@]}" || { echo "gpu-check: pip failed"; exit 2; }
{
    nvidia-smi
    "$GPU_PYTHON" -c "import torch, sklearn, numpy, skorch, robustfit
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(),
      'sklearn', sklearn.__version__, 'numpy', numpy.__version__, 'skorch', skorch.__version__,
      'robustfit', robustfit.__version__, 'from', robustfit.__file__)"
} 2>&1 | tee "$GPU_RESULTS/gpu_env.txt"

echo "== tests marked gpu (at most $GPU_TEST_SECONDS s)"
timeout -k 10 "$GPU_TEST_SECONDS" "$GPU_PYTHON" -m pytest -m gpu -v -rs tests/test_gpu.py tests/test_distributed.py 2>&1 \
    | tee "$GPU_RESULTS/gpu_tests.txt" || { echo "gpu-check: tests FAILED or timed out"; status=1; }

echo "== bench_amp.py (at most $GPU_AMP_SECONDS s)"
timeout -k 10 "$GPU_AMP_SECONDS" "$GPU_PYTHON" benchmarks/bench_amp.py \
    --train --budget $((GPU_AMP_SECONDS - 40)) --out "$GPU_RESULTS/bench_amp.txt" \
    || { echo "gpu-check: bench_amp.py FAILED or timed out"; status=1; }

left=$((GPU_CHECK_SECONDS - GPU_DDP_SECONDS - (SECONDS - start)))
if [ "$left" -lt 60 ]; then
    echo "gpu-check: only $left s left, bench_gpu.py not run"
    status=1
else
    echo "== bench_gpu.py (budget $((left - 20)) s)"
    timeout -k 10 "$left" "$GPU_PYTHON" benchmarks/bench_gpu.py --budget $((left - 20)) \
        --out "$GPU_RESULTS/bench_gpu.txt" || { echo "gpu-check: bench_gpu.py FAILED or timed out"; status=1; }
fi

echo "== bench_ddp_gpu.py (at most $GPU_DDP_SECONDS s)"
timeout -k 10 "$GPU_DDP_SECONDS" "$GPU_PYTHON" benchmarks/bench_ddp_gpu.py \
    --out "$GPU_RESULTS/bench_ddp_gpu.txt" || { echo "gpu-check: bench_ddp_gpu.py FAILED or timed out"; status=1; }
echo "== gpu-check done in $((SECONDS - start)) s, status $status; results in $GPU_RESULTS"
exit $status
