#!/usr/bin/env bash
# core B: the dedicated 2-bit and FP models at 256 epochs, seed 0, in bf16 (this CPU's default; the 64- and 128-epoch ones ran in float32)
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
for b in 2 32; do
  $Q train cifar100 $C trainer.amp=bf16 trainer.epochs=256 trainer.eval_every=32 seed=0 trainer.kind=dedicated "quant.bits=[$b]" out_dir=runs/converge10/ep256_bf16/seed0/dedicated_$b
  $Q eval runs/converge10/ep256_bf16/seed0/dedicated_$b --split train trainer.num_threads=1
done
