#!/usr/bin/env bash
# 45 % x 32 epochs, seed 0, from scratch, today's defaults (bf16 by trainer.amp=auto): the quantizable model
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.45 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
s=0
O=runs/check45/ep32/seed$s/full
$Q train cifar100 $C trainer.epochs=32 trainer.eval_every=4 seed=$s out_dir=$O
$Q eval $O --split train trainer.num_threads=1
bash runs/logs/copy_raw.sh $O amd_bf16_p45_ep32_seed${s}_full check45
