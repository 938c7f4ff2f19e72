#!/usr/bin/env bash
# core A: the dedicated 2-bit model at 512 epochs (bf16, seed 0), the doubling after 256; then private statistics at 32 joint epochs of the seed-0 FP start
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=512 trainer.eval_every=64 seed=0 trainer.kind=dedicated "quant.bits=[2]" out_dir=runs/converge10/ep512_bf16/seed0/dedicated_2
$Q eval runs/converge10/ep512_bf16/seed0/dedicated_2 --split train trainer.num_threads=1
O=runs/converge10/fp_start32_lr001_bf16/seed0/private_stats
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=32 trainer.eval_every=8 seed=0 optim.lr=0.01 quant.bn=private_stats model.init_from=runs/converge10/ep64/seed0/dedicated_32 out_dir=$O
$Q eval $O --split train trainer.num_threads=1
