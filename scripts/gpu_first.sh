#!/usr/bin/env bash
# What the next lent GPU runs first: the batching figures, then as much of the 200-epoch
# CIFAR-100 table (cifar100-dev: train 45,000, val 5,000) as the allotment allows, in two
# calls back to back on one warm machine (each call carries half of the images).
#
# Here, before the calls (the device cannot read ../shared and carries 64 MiB a call):
#   make device-site
#   .venv/bin/python scripts/device_data.py pack ../shared/data/cifar100-dev .gpu/cifar100-dev --fraction 1 --parts 2
# Call 1 (about 5 min), carry [.site, .gpu/cifar100-dev.part1of2.zip]:
#   OUT=$OUT bash scripts/gpu_first.sh bench
#     unpacks part 1; the CUDA tests of the mode batch and the pack; the mode-batched step
#     and packs of 1, 2, 4, 10 runs against the same runs one after another (eager, and
#     compiled with CUDA graphs at 1 and 10), GPU kernel-busy share and TFLOP/s.
# Call 2 (at once, while the machine is warm), carry [.site, .gpu/cifar100-dev.part2of2.zip]:
#   OUT=$OUT bash scripts/gpu_first.sh train
#     unpacks part 2, then `qdnn reproduce cifar100 --grid table200 --launcher packed`: the
#     ablation's four quantizable variants, private BN statistics and a dedicated model per
#     bit-width (10 runs, seed 0) as one pack, 200 epochs, bf16, compiled, until LIMIT_S; the time box's SIGTERM makes every run
#     save a mid-epoch checkpoint. Run directories come back in $OUT (runs_*.tgz, with
#     checkpoints): a later GPU resumes them (carry runs/gpu200 back after unpacking here).
set -u
STAGE=${1:?usage: gpu_first.sh bench|train}
OUT=${OUT:-/tmp/qdnn-gpu-first}
PY=${PY:-python3}
DATA_DIR=${DATA_DIR:-.gpu/cifar100-dev}
RUNS=${RUNS:-runs/gpu200}
EPOCHS=${EPOCHS:-200}
LIMIT_S=${LIMIT_S:-500}
PACK=${PACK:-10}
COMPILE=${COMPILE:-reduce-overhead}
EXTRA=${EXTRA:-}
BENCH_SIZES=${BENCH_SIZES:-1,2,4,10}
BENCH_COMPILED=${BENCH_COMPILED:-1,10}
LOG="$STAGE.log"
source "$(dirname "$0")/device_env.sh"
$PY scripts/device_data.py unpack "$DATA_DIR" 2>&1 | tee -a "$OUT/$STAGE.log"

if [ "$STAGE" = bench ]; then
    timeout 120 $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py -k "mode_batched or packed" \
        > "$OUT/cuda_tests.log" 2>&1
    stamp "CUDA tests exit $? ($(tail -1 "$OUT/cuda_tests.log"))"
    timeout $(( LIMIT_S - $(date +%s) + t0 )) $PY -c "
import json, sys
from qdnn_cli.bench.batching import run
sizes = tuple(int(n) for n in '$BENCH_SIZES'.split(','))
compiled = tuple(int(n) for n in '$BENCH_COMPILED'.split(',') if n)
r = run('cuda', batch=128, pack_batch=128, pack_sizes=sizes, repeats=5, amp='bf16', profile=True,
        compiled_sizes=compiled, compile_mode='$COMPILE')
json.dump(r, open('$OUT/bench_pack_cuda.json', 'w'), indent=1)
" 2>&1 | grep -v "^W[0-9]" | tee "$OUT/bench_pack_cuda.log"
    stamp "bench exit ${PIPESTATUS[0]} (124: the time box ended)"
    exit 0
fi

[ "$STAGE" = train ] || { echo "unknown stage $STAGE: bench or train"; exit 2; }
DATA=$($PY scripts/device_data.py fill "$DATA_DIR") || { stamp "data fill failed (both parts carried?)"; exit 2; }
$PY -c "from qdnn_cli.data.sources import load_folder; s = load_folder('$DATA_DIR', 'train', 'val', 3, 64, ((0.5,) * 3, (0.25,) * 3)); print(len(s.train.labels), len(s.val.labels))"
stamp "data ready: $DATA"
# the time box sends SIGTERM: the pack saves every run mid-epoch and exits 75
timeout "$(( LIMIT_S - $(date +%s) + t0 ))" $PY -m qdnn_cli.cli reproduce cifar100 --seeds 1 --runs-dir "$RUNS" \
    --report-dir "$OUT/report" --grid table200 --launcher packed --jobs "$PACK" $DATA trainer.epochs="$EPOCHS" \
    trainer.amp=bf16 trainer.compile="$COMPILE" trainer.eval_every=10 trainer.progress=false $EXTRA \
    2>&1 | grep -v "^W[0-9]" | tee -a "$OUT/train.log"
stamp "reproduce exit ${PIPESTATUS[0]} (124 or 75: the time box ended, runs resumable)"
find "$RUNS" -name status.json | sort | xargs grep -H -o '"epoch": *[0-9]*' | tee "$OUT/epochs.txt"
# two archives (at most 16 MiB a file comes back): quantizable runs, dedicated runs
tar czf "$OUT/runs_quantizable.tgz" --exclude='best.pt' --exclude='dedicated_*' "$RUNS"
tar czf "$OUT/runs_dedicated.tgz" --exclude='best.pt' $(find "$RUNS" -maxdepth 2 -type d -name 'dedicated_*')
ls -la "$OUT"
stamp "done"
