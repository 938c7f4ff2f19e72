#!/usr/bin/env bash
# core A: the dedicated 2-bit and FP models at 384 epochs (bf16, seed 0): equal passes with the 384-pass FP-start point
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
for b in 2 32; do
  O=runs/converge10/ep384_bf16/seed0/dedicated_$b
  $Q train cifar100 $C trainer.amp=bf16 trainer.epochs=384 trainer.eval_every=48 seed=0 trainer.kind=dedicated "quant.bits=[$b]" out_dir=$O
  $Q eval $O --split train trainer.num_threads=1
done
