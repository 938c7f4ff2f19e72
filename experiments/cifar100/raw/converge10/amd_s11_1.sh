#!/usr/bin/env bash
# the dedicated 4-bit model, seed 1, 64 epochs (bf16, one thread): the step below the 128-epoch point
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
O=runs/converge10/ep64_bf16/seed1/dedicated_4
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=64 trainer.eval_every=8 seed=1 trainer.kind=dedicated "quant.bits=[4]" out_dir=$O
$Q eval $O --split train trainer.num_threads=1
