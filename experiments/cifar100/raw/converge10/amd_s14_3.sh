#!/usr/bin/env bash
# once amd_s14_0.sh has copied its FP-start quantizable run: stop it there (its 384-epoch dedicated 4-bit run would
# end too late for this session), then the dedicated 2-bit and 4-bit models from seed 2's FP source, 64 epochs, and
# the 2-bit one of seed 0 at 128 epochs (the second seed of the 64 -> 128 step)
set -x
R=experiments/cifar100/raw/converge10
while [ ! -f $R/amd_bf16_fp_start64_lr001_seed2_full/results.csv ] || [ ! -f $R/amd_bf16_fp_start64_lr001_seed2_full/status.json ]; do sleep 20; done
sleep 5
pkill -f amd_s14_0.sh; pkill -f "ep384_bf16/seed2/dedicated_4"; sleep 5
rm -rf runs/converge10/ep384_bf16/seed2/dedicated_4
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
for b in 2 4; do
  O=runs/converge10/fp_start64_lr001_bf16/seed2/dedicated_$b
  $Q train cifar100 $C trainer.amp=bf16 trainer.epochs=64 trainer.eval_every=8 seed=2 optim.lr=0.01 trainer.kind=dedicated "quant.bits=[$b]" model.init_from=runs/converge10/ep64/seed2/dedicated_32 out_dir=$O
  $Q eval $O --split train trainer.num_threads=1
  bash runs/logs/copy_raw.sh $O amd_bf16_fp_start64_lr001_seed2_dedicated_$b
done
O=runs/converge10/fp_start128_lr001_bf16/seed0/dedicated_2
$Q train cifar100 $C trainer.amp=bf16 trainer.epochs=128 trainer.eval_every=16 seed=0 optim.lr=0.01 trainer.kind=dedicated "quant.bits=[2]" model.init_from=runs/converge10/ep64/seed0/dedicated_32 out_dir=$O
$Q eval $O --split train trainer.num_threads=1
bash runs/logs/copy_raw.sh $O amd_bf16_fp_start128_lr001_seed0_dedicated_2
