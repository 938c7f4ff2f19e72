#!/usr/bin/env bash
# core A: the dedicated 2-bit model, seed 1 (bf16, one thread): 384 epochs (equal passes with the converged FP-start point), then 128 (equal epochs)
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
for e in 384 128; do
  O=runs/converge10/ep${e}_bf16/seed1/dedicated_2
  $Q train cifar100 $C trainer.amp=bf16 trainer.epochs=$e trainer.eval_every=$((e / 8)) seed=1 trainer.kind=dedicated "quant.bits=[2]" out_dir=$O
  $Q eval $O --split train trainer.num_threads=1
done
