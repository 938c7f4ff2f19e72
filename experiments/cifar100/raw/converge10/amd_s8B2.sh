#!/usr/bin/env bash
# core B, after s8B: the quantizable model from scratch (defaults, bf16, seed 0) at 64 epochs (320 passes), the from-scratch curve past 32 epochs
while kill -0 19136 2>/dev/null; do sleep 20; done
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
O=runs/converge10/ep64_bf16/seed0/full
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=64 trainer.eval_every=8 seed=0 out_dir=$O
$Q eval $O --split train trainer.num_threads=1
