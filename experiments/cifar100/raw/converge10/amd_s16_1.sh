#!/usr/bin/env bash
# after amd_s15_1.sh: the 64 -> 128 step of the dedicated models from the FP source, the seeds missing: 4-bit seeds 0 and 2, 2-bit seed 2
set -x
while pgrep -f amd_s15_1.sh > /dev/null; do sleep 20; done
C="data=folder data.root=../shared/data/cifar100-dev data.train_fraction=0.1 data.subset_seed=0 trainer.progress=false trainer.checkpoint_every_minutes=5 trainer.num_threads=1"
Q=.venv/bin/qdnn
for sb in "0 4" "2 4" "2 2"; do set -- $sb
  s=$1; b=$2
  O=runs/converge10/fp_start128_lr001_bf16/seed$s/dedicated_$b
  $Q train cifar100 $C trainer.amp=bf16 trainer.epochs=128 trainer.eval_every=16 seed=$s optim.lr=0.01 trainer.kind=dedicated "quant.bits=[$b]" model.init_from=runs/converge10/ep64/seed$s/dedicated_32 out_dir=$O
  $Q eval $O --split train trainer.num_threads=1
  bash runs/logs/copy_raw.sh $O amd_bf16_fp_start128_lr001_seed${s}_dedicated_$b
done
