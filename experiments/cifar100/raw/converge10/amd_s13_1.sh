#!/usr/bin/env bash
# after amd_s12_1: the dedicated 4-bit model, seed 1, 256 epochs (the 128 -> 256 step of the 4-bit curve); bf16, one thread
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
O=runs/converge10/ep256_bf16/seed1/dedicated_4
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=256 trainer.eval_every=32 seed=1 trainer.kind=dedicated "quant.bits=[4]" out_dir=$O
$Q eval $O --split train trainer.num_threads=1
bash runs/logs/copy_raw.sh $O amd_bf16_ep256_seed1_dedicated_4
