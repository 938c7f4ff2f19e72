#!/usr/bin/env bash
# Issue 14's small-budget CIFAR-100 table on a lent GPU, time-boxed and resumable: every
# variant of conf/grid/reproduce.yaml for seeds 0..SEEDS-1 on ../shared/data/cifar100-dev
# (45 % of train/, 8 epochs, evaluated on val/), then the report. Finished runs are
# skipped and interrupted ones resume, so the same call continues in the next slice;
# carry RUNS back and forth between calls. Prepared on the CPU machine; not yet run on a GPU.
#
#   OUT=$OUT RUNS=runs/gpu-table LIMIT_S=540 bash scripts/gpu_table.sh
set -u
OUT=${OUT:-/tmp/qdnn-gpu-table}
RUNS=${RUNS:-runs/gpu-table}
SEEDS=${SEEDS:-2}
EPOCHS=${EPOCHS:-8}
FRACTION=${FRACTION:-0.45}
LIMIT_S=${LIMIT_S:-540}
DATA=${DATA:-$(cd .. && pwd)/shared/data/cifar100-dev}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/.site${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
mkdir -p "$OUT"
timeout "$LIMIT_S" $PY -m qdnn_cli.cli reproduce cifar100 --seeds "$SEEDS" --runs-dir "$RUNS" --report-dir "$OUT/report" \
    data=folder data.root="$DATA" data.train_fraction="$FRACTION" trainer.epochs="$EPOCHS" trainer.progress=false \
    trainer.amp=bf16 trainer.compile=reduce-overhead trainer.compile_scope=step 2>&1 | tee -a "$OUT/table.log"
echo "exit: ${PIPESTATUS[0]} (124: the time box ended; call again with the same RUNS to continue)" | tee -a "$OUT/table.log"
find "$RUNS" -name status.json -exec grep -H '"state"' {} \; | tee "$OUT/states.txt"
