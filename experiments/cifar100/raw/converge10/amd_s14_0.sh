#!/usr/bin/env bash
# seed 2 of the converged comparison: the FP source (plain FP, 64 epochs, float32), the quantizable model
# started from it (64 joint epochs, lr 0.01, bf16), then the dedicated 4-bit model at 384 epochs; one thread
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
S=runs/converge10/ep64/seed2/dedicated_32
$Q train cifar100 $C trainer.amp=none trainer.epochs=64 trainer.eval_every=8 seed=2 trainer.kind=dedicated "quant.bits=[32]" out_dir=$S
$Q eval $S --split train trainer.num_threads=1
bash runs/logs/copy_raw.sh $S amd_f32_ep64_seed2_dedicated_32
O=runs/converge10/fp_start64_lr001_bf16/seed2/full
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=64 trainer.eval_every=8 seed=2 optim.lr=0.01 model.init_from=$S out_dir=$O
$Q eval $O --split train trainer.num_threads=1
bash runs/logs/copy_raw.sh $O amd_bf16_fp_start64_lr001_seed2_full
O=runs/converge10/ep384_bf16/seed2/dedicated_4
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=384 trainer.eval_every=48 seed=2 trainer.kind=dedicated "quant.bits=[4]" out_dir=$O
$Q eval $O --split train trainer.num_threads=1
bash runs/logs/copy_raw.sh $O amd_bf16_ep384_seed2_dedicated_4
