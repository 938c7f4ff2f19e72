#!/usr/bin/env bash
# core B: the seed-1 64-epoch FP source (float32, as seed 0's), its FP start's 32 joint epochs (bf16); then the dedicated FP model at 512 epochs (bf16, seed 0)
set -x
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
S=runs/converge10/ep64/seed1/dedicated_32
$Q train cifar100 $C trainer.amp=none trainer.epochs=64 trainer.eval_every=8 seed=1 trainer.kind=dedicated "quant.bits=[32]" out_dir=$S
$Q eval $S --split train trainer.num_threads=1
O=runs/converge10/fp_start32_lr001_bf16/seed1/full
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=32 trainer.eval_every=8 seed=1 optim.lr=0.01 model.init_from=$S out_dir=$O
$Q eval $O --split train trainer.num_threads=1
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=512 trainer.eval_every=64 seed=0 trainer.kind=dedicated "quant.bits=[32]" out_dir=runs/converge10/ep512_bf16/seed0/dedicated_32
$Q eval runs/converge10/ep512_bf16/seed0/dedicated_32 --split train trainer.num_threads=1
