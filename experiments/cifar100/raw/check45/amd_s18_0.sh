#!/usr/bin/env bash
# 45 %, seed 0, from scratch, today's defaults: the dedicated 2-bit model at equal passes with the
# 32-epoch quantizable model (5 modes x 32 epochs = 160 passes per image): 160 epochs
set -x
C45="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.45 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
s=0; b=2
O=runs/check45/ep160/seed$s/dedicated_$b
$Q train cifar100 $C45 trainer.epochs=160 trainer.eval_every=20 seed=$s trainer.kind=dedicated "quant.bits=[$b]" out_dir=$O
$Q eval $O --split train trainer.num_threads=1
bash runs/logs/copy_raw.sh $O amd_bf16_p45_ep160_seed${s}_dedicated_$b check45
