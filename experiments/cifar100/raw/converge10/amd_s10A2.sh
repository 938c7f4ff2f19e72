#!/usr/bin/env bash
# core A, after s10A.sh: the dedicated 4-bit model, seed 0, 128 epochs (bf16, one thread): equal epochs with the converged FP-start point
while pgrep -f "runs/logs/s10A.sh" > /dev/null; do sleep 20; done
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
O=runs/converge10/ep128_bf16/seed0/dedicated_4
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=128 trainer.eval_every=16 seed=0 trainer.kind=dedicated "quant.bits=[4]" out_dir=$O
$Q eval $O --split train trainer.num_threads=1
