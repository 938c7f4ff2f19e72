#!/usr/bin/env bash
# the consistency and BN variants at the converged point: FP start, 64 joint epochs (384 passes), bf16, one thread
# $1 = seed, then pairs of (name, override)
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
S=$1; shift
while [ $# -gt 0 ]; do
  O=runs/converge10/fp_start64_lr001_bf16/seed$S/$1
  $Q train cifar100 $C trainer.amp=bf16 trainer.epochs=64 trainer.eval_every=8 seed=$S optim.lr=0.01 model.init_from=runs/converge10/ep64/seed$S/dedicated_32 $2 out_dir=$O
  $Q eval $O --split train trainer.num_threads=1
  shift 2
done
