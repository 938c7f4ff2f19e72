#!/usr/bin/env bash
# 45 % x 32 epochs, seed 0, from scratch: the dedicated 2-bit and FP models; then, at 10 %,
# the dedicated 4-bit model from the FP source at equal passes (320 epochs), seeds 0 and 1
set -x
C45="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.45 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
C10="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
s=0
for b in 2 32; do
  O=runs/check45/ep32/seed$s/dedicated_$b
  $Q train cifar100 $C45 trainer.epochs=32 trainer.eval_every=4 seed=$s trainer.kind=dedicated "quant.bits=[$b]" out_dir=$O
  $Q eval $O --split train trainer.num_threads=1
  bash runs/logs/copy_raw.sh $O amd_bf16_p45_ep32_seed${s}_dedicated_$b check45
done
b=4
for s in 0 1; do
  O=runs/converge10/fp_start320_lr001_bf16/seed$s/dedicated_$b
  $Q train cifar100 $C10 trainer.amp=bf16 trainer.epochs=320 trainer.eval_every=40 seed=$s optim.lr=0.01 trainer.kind=dedicated "quant.bits=[$b]" model.init_from=runs/converge10/ep64/seed$s/dedicated_32 out_dir=$O
  $Q eval $O --split train trainer.num_threads=1
  bash runs/logs/copy_raw.sh $O amd_bf16_fp_start320_lr001_seed${s}_dedicated_$b
done
