#!/usr/bin/env bash
# One prepared check of the CUDA path on a GPU machine (run from the repository root):
# the CUDA tests (quantizers bit for bit, device-side batches, no host sync in a step,
# bf16 / fp16 / channels_last / compile / CUDA graphs), then `make bench`'s CUDA section
# (step variants and the real 50k-image CIFAR-100 ResNet-20 epoch). Logs go to $OUT.
#
# Where the machine's Python lacks hydra/omegaconf, put pure-Python copies in .site/
# (see `make device-site`); torch comes from the machine.
set -u
OUT=${OUT:-/tmp/qdnn-device-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/.site${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
TESTS_S=${TESTS_S:-150}
TESTS=${TESTS:-tests/test_cuda.py tests/test_data_path.py}
BENCH_ARGS=${BENCH_ARGS:-}
BENCH_S=${BENCH_S:-330}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, hydra, typer; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'hydra', hydra.__version__)" | tee -a "$OUT/gpu.txt"
start=$(date +%s)
timeout "$TESTS_S" $PY -m pytest -q -p no:cacheprovider -rs --durations=8 $TESTS 2>&1 | tee "$OUT/cuda_tests.log"
echo "tests: $(( $(date +%s) - start )) s"
start=$(date +%s)
timeout "$BENCH_S" $PY -m qdnn_cli.bench --no-cpu --cuda-budget-s $(( BENCH_S - 200 )) --json "$OUT/bench_cuda.json" $BENCH_ARGS 2>&1 | tee "$OUT/bench_cuda.log"
echo "bench: $(( $(date +%s) - start )) s"
