import os
from pathlib import Path

import pytest

# Threads are left as torch sets them from the environment, here and in every `qdnn` a test
# starts: a test that compares a run in this process with one in a subprocess (kill -9,
# SIGTERM, launchers) compares the same kernels' sums only at the same thread count *and*
# the same OpenMP start-up (OMP_NUM_THREADS set in one process and not in the other splits
# sums differently even at equal counts: measured). OMP_NUM_THREADS=1 set by the caller
# reaches both.

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar100-dev"


# inductor's C++ code for the CPU uses the vector headers that ATEN_CPU_CAPABILITY=default
# leaves out ("'at::vec' has not been declared"): torch.compile cannot build there
inductor_builds = pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") == "default",
                                     reason="torch.compile's CPU code does not build under ATEN_CPU_CAPABILITY=default")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # folder decode cache goes to a temp dir, never the user's ~/.cache
    monkeypatch.setenv("QDNN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_overrides(out_dir, *extra):
    """A real config shrunk to seconds: synthetic 8px data, tiny net, 2 epochs."""
    return [
        "data=synthetic", "data.train_size=96", "data.val_size=48", "data.image_size=8", "data.num_classes=4",
        "model=tiny", "model.kwargs.width=8", "trainer.epochs=2", "trainer.batch_size=32",
        "trainer.eval_batch_size=48", "trainer.device=cpu", "trainer.progress=false", f"out_dir={out_dir}",
        *extra,
    ]
