#!/usr/bin/env bash
# core A, after the float32 source (pid 1883) ends: the FP start's 64 joint epochs in bf16 (this CPU's default)
set -x
while kill -0 1883 2>/dev/null; do sleep 15; done
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
$Q eval runs/converge10/ep64/seed0/dedicated_32 --split train trainer.num_threads=1
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=64 trainer.eval_every=8 seed=0 optim.lr=0.01 model.init_from=runs/converge10/ep64/seed0/dedicated_32 out_dir=runs/converge10/fp_start64_lr001_bf16/seed0/full
$Q eval runs/converge10/fp_start64_lr001_bf16/seed0/full --split train trainer.num_threads=1
