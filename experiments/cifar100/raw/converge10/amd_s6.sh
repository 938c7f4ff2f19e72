#!/usr/bin/env bash
# the method's levers on the converged lineage, 32 joint epochs from the same source, bf16, seed 0: $1 = name, $2 = override
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
O=runs/converge10/fp_start32_lr001_bf16/seed0/$1
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=32 trainer.eval_every=8 seed=0 optim.lr=0.01 model.init_from=runs/converge10/ep64/seed0/dedicated_32 $2 out_dir=$O
$Q eval $O --split train trainer.num_threads=1
