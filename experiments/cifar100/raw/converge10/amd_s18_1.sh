#!/usr/bin/env bash
# 10 %, seed 2: the dedicated 4-bit model from the FP source at equal passes (320 epochs), the third
# seed; then private statistics at 64 joint epochs of the seed-2 FP start, the third seed
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
s=2; b=4
O=runs/converge10/fp_start320_lr001_bf16/seed$s/dedicated_$b
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=320 trainer.eval_every=40 seed=$s optim.lr=0.01 trainer.kind=dedicated "quant.bits=[$b]" model.init_from=runs/converge10/ep64/seed$s/dedicated_32 out_dir=$O
$Q eval $O --split train trainer.num_threads=1
bash runs/logs/copy_raw.sh $O amd_bf16_fp_start320_lr001_seed${s}_dedicated_$b
O=runs/converge10/fp_start64_lr001_bf16/seed$s/private_stats
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=64 trainer.eval_every=8 seed=$s optim.lr=0.01 quant.bn=private_stats model.init_from=runs/converge10/ep64/seed$s/dedicated_32 out_dir=$O
$Q eval $O --split train trainer.num_threads=1
bash runs/logs/copy_raw.sh $O amd_bf16_fp_start64_lr001_seed${s}_private_stats
