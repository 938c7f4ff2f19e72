#!/usr/bin/env bash
# core B: seed 1 of the 384-pass point: 64 joint epochs (bf16) started from seed 1's 64-epoch FP model
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
O=runs/converge10/fp_start64_lr001_bf16/seed1/full
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=64 trainer.eval_every=8 seed=1 optim.lr=0.01 model.init_from=runs/converge10/ep64/seed1/dedicated_32 out_dir=$O
$Q eval $O --split train trainer.num_threads=1
