"""Data-parallel training through torchrun (gloo, CPU) equals one process with the same global batch."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides

# No BN (per-process batch statistics differ from full-batch ones by design) and no
# augmentation, so the only difference left is the gradient synchronisation itself.
EXACT = ["model.kwargs.norm=false", "data.crop_padding=0", "data.flip=false", "data.train_size=128",
         "trainer.batch_size=32", "trainer.epochs=2", "quant.bits=[2,4,32]"]


def _weights(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


# Float comparison, float32 bound: no BN, no augmentation, two epochs; gloo sums two half-batch gradients where
# one process sums one batch (1e-7 relative per step), and atol 1e-5 on weights of size ~0.1 leaves two orders
# of margin
@pytest.mark.numerics
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_gloo_matches_single_process(tmp_path):
    bindir = Path(sys.executable).parent
    single, double = tmp_path / "single", tmp_path / "double"
    one = subprocess.run([str(bindir / "qdnn"), "train", "quickstart", *tiny_overrides(single, *EXACT)],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    torchrun = shutil.which("torchrun", path=str(bindir)) or "torchrun"
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "qdnn_cli.cli", "train", "quickstart",
                          *tiny_overrides(double, *EXACT)], capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(single), _weights(double)
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=1e-5), k
    # only rank 0 printed the results table
    assert two.stdout.count("final validation accuracy") == 1
    # evaluation reduced across ranks covers the whole validation set: same accuracy
    ra = (single / "results.csv").read_text()
    rb = (double / "results.csv").read_text()
    assert [l.split(",")[:2] for l in ra.splitlines()] == [l.split(",")[:2] for l in rb.splitlines()]


def test_rank_0_failure_before_training_stops_every_rank(tmp_path):
    """A locked run directory fails on rank 0; rank 1 must exit too instead of waiting."""
    from qdnn_cli.engine.checkpoint import RunLock

    run = tmp_path / "run"
    run.mkdir()
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    with RunLock(run):
        two = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "qdnn_cli.cli", "train",
                              "quickstart", *tiny_overrides(run)], capture_output=True, text=True, timeout=120)
    assert two.returncode != 0
    assert "is in use by pid" in two.stderr
