#!/usr/bin/env bash
# dedicated 2-bit and 4-bit models started from the FP sources (the quantizable model's start), 64 epochs at lr 0.01
# (the FP-start recipe); the sources of seeds 1 and 0 trained again first (float32, bit for bit the earlier ones on
# this CPU if its metrics match); bf16, one thread
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
for s in 1 0; do
  S=runs/converge10/ep64/seed$s/dedicated_32
  $Q train cifar100 $C trainer.amp=none trainer.epochs=64 trainer.eval_every=8 seed=$s trainer.kind=dedicated "quant.bits=[32]" out_dir=$S
  for b in 2 4; do
    O=runs/converge10/fp_start64_lr001_bf16/seed$s/dedicated_$b
    $Q train cifar100 $C trainer.amp=bf16 trainer.epochs=64 trainer.eval_every=8 seed=$s optim.lr=0.01 trainer.kind=dedicated "quant.bits=[$b]" model.init_from=$S out_dir=$O
    $Q eval $O --split train trainer.num_threads=1
    bash runs/logs/copy_raw.sh $O amd_bf16_fp_start64_lr001_seed${s}_dedicated_$b
  done
done
