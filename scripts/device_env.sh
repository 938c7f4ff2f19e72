# Sourced by the scripts a lent GPU runs (gpu_first.sh, gpu_table.sh): the environment
# (qdnn from this tree, hydra/omegaconf from .site, an image cache), $OUT, a timestamped
# log line `stamp MESSAGE` into $OUT/$LOG, and what the machine is (into $OUT/gpu.txt).
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/.site${PYTHONPATH:+:$PYTHONPATH}"
export QDNN_CACHE=${QDNN_CACHE:-/tmp/qdnn_cache}
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$OUT/$LOG"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import torch, hydra; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" \
    2>&1 | tee -a "$OUT/gpu.txt"
git log -1 --format='commit %h %s' 2>/dev/null | tee -a "$OUT/gpu.txt"
