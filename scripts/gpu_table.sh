#!/usr/bin/env bash
# Issue 14's small-budget CIFAR-100 table on a lent GPU, in one time-boxed call: every
# variant of conf/grid/fidelity.yaml (quantizable, ablations, dedicated per bit, recipe
# options) for seeds 0..SEEDS-1, 45 % of cifar100-dev/train (one subset shared by all
# seeds, data.subset_seed=0), 8 epochs, evaluated on val/. Runs go N at once on the one
# GPU (eager: each tiny ResNet-20 step is launch-bound, so processes overlap well).
#
# Before the call, on the CPU machine (the device cannot read ../shared, and carries 64 MiB):
#   make device-site device-data
# then run it with carry [.site, .gpu]:  OUT=$OUT bash scripts/gpu_table.sh   (= make device-table)
# Finished runs are skipped and interrupted ones resume: a second call while the machine
# is still warm (its ignored runs/ stays) continues the table; so does carrying RUNS back.
# Run on 2026-11-28 (H200, torch 2.11): experiments/cifar100/README.md has what it gave.
set -u
OUT=${OUT:-/tmp/qdnn-gpu-table}
RUNS=${RUNS:-runs/gpu-fidelity}
SEEDS=${SEEDS:-2}
EPOCHS=${EPOCHS:-8}
JOBS=${JOBS:-10}
LIMIT_S=${LIMIT_S:-440}
GRID=${GRID:-fidelity}
EXTRA=${EXTRA:-}
PY=${PY:-python3}
LOG=table.log
source "$(dirname "$0")/device_env.sh"
DATA=$($PY scripts/device_data.py fill .gpu/cifar100-dev) || { stamp "data fill failed"; exit 2; }
# decode once into the cache that every run then reads
$PY -c "from qdnn_cli.data.sources import load_folder; s = load_folder('.gpu/cifar100-dev', 'train', 'val', 3, 64, ((0.5,) * 3, (0.25,) * 3)); print(len(s.train.labels), len(s.val.labels))"
stamp "data ready: $DATA"

# the CUDA tests, beside the table (a few seconds of GPU each)
(timeout 240 $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_gpu_flags.py > "$OUT/cuda_tests.log" 2>&1; echo "exit $?" >> "$OUT/cuda_tests.log") &

# a 5-step smoke run first: a broken CUDA path fails here in seconds, not in every run
$PY -m qdnn_cli.cli train cifar100 $DATA trainer.epochs=1 trainer.max_steps_per_epoch=5 trainer.progress=false \
    out_dir=/tmp/smoke $EXTRA > "$OUT/smoke.log" 2>&1 || { stamp "smoke run failed"; tail -30 "$OUT/smoke.log"; wait; exit 3; }
stamp "smoke run ok"

timeout "$LIMIT_S" $PY -m qdnn_cli.cli reproduce cifar100 --grid "$GRID" --seeds "$SEEDS" --runs-dir "$RUNS" \
    --report-dir "$OUT/report" --launcher parallel --jobs "$JOBS" \
    $DATA trainer.epochs="$EPOCHS" trainer.num_threads=1 $EXTRA 2>&1 | tee -a "$OUT/table.log"
stamp "reproduce exit ${PIPESTATUS[0]} (124: the time box ended)"
# the time box's SIGTERM reached every run: each saves a mid-epoch checkpoint and exits 75
for _ in $(seq 90); do pgrep -f "qdnn_cli.cli train" > /dev/null || break; sleep 1; done
wait
find "$RUNS" -name status.json | sort | xargs grep -H -o '"state": *"[a-z]*"' | tee "$OUT/states.txt"
tar czf "$OUT/runs.tgz" --exclude='*.pt' "$RUNS"
stamp "done"
