#!/usr/bin/env bash
# core A, after s5A2 (pid 1953): the FP start's 32 joint epochs in bf16 from the same source, for the 32 -> 64 doubling
set -x
while kill -0 1953 2>/dev/null; do sleep 15; done
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=32 trainer.eval_every=8 seed=0 optim.lr=0.01 model.init_from=runs/converge10/ep64/seed0/dedicated_32 out_dir=runs/converge10/fp_start32_lr001_bf16/seed0/full
$Q eval runs/converge10/fp_start32_lr001_bf16/seed0/full --split train trainer.num_threads=1
