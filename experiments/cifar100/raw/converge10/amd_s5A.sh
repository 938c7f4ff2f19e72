#!/usr/bin/env bash
# core A: the seed-0 64-epoch FP source (float32, as the lineage's), then the FP start's 64 joint epochs
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1 trainer.amp=none"
Q=.venv/bin/qdnn
$Q train cifar100 $C trainer.epochs=64 trainer.eval_every=8 seed=0 trainer.kind=dedicated "quant.bits=[32]" out_dir=runs/converge10/ep64/seed0/dedicated_32
$Q train cifar100 $C trainer.epochs=64 trainer.eval_every=8 seed=0 optim.lr=0.01 model.init_from=runs/converge10/ep64/seed0/dedicated_32 out_dir=runs/converge10/fp_start64_lr001/seed0/full
$Q eval runs/converge10/fp_start64_lr001/seed0/full --split train trainer.num_threads=1
