#!/usr/bin/env bash
# the dedicated 4-bit model, seed 1, 384 epochs (equal passes with the converged FP-start point), then the dedicated 32-bit model, seed 1, 256 epochs (pairs the 128 -> 256 step); bf16, one thread
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
O=runs/converge10/ep384_bf16/seed1/dedicated_4
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=384 trainer.eval_every=48 seed=1 trainer.kind=dedicated "quant.bits=[4]" out_dir=$O
$Q eval $O --split train trainer.num_threads=1
bash runs/logs/copy_raw.sh $O amd_bf16_ep384_seed1_dedicated_4
O=runs/converge10/ep256_bf16/seed1/dedicated_32
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=256 trainer.eval_every=32 seed=1 trainer.kind=dedicated "quant.bits=[32]" out_dir=$O
$Q eval $O --split train trainer.num_threads=1
bash runs/logs/copy_raw.sh $O amd_bf16_ep256_seed1_dedicated_32
