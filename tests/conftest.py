import os
from pathlib import Path

import pytest

# Threads are left as torch sets them from the environment. A test that compares runs of
# several processes (kill -9, SIGTERM, a requeued job) takes the `one_thread` fixture and
# runs every side as a `qdnn` process: at two threads two processes' sums were seen to
# differ in the last digit (with OMP_NUM_THREADS set in one and not the other, and once
# without any visible difference, under heavy load); at one thread a sum has one order.

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar100-dev"


# inductor's C++ code for the CPU uses the vector headers that ATEN_CPU_CAPABILITY=default
# leaves out ("'at::vec' has not been declared"): torch.compile cannot build there
inductor_builds = pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") == "default",
                                     reason="torch.compile's CPU code does not build under ATEN_CPU_CAPABILITY=default")


@pytest.fixture
def one_thread(monkeypatch):
    """Every process the test starts computes at one thread (OMP_NUM_THREADS=1): an exact
    comparison across processes runs each side as such a process (helpers.qdnn_process),
    so each sum has one order in all of them. This process's own thread count is not
    changed: one that changed after OpenMP started must not fork DataLoader workers (it
    crashed here)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _float32_by_default(monkeypatch):
    # trainer.amp=auto picks bf16 on a CPU with native bf16: the suite's float comparisons
    # must not depend on which CPU runs them, so every test (and every process it starts)
    # trains in float32 unless it asks for bf16 or sets QDNN_CPU_BF16 itself
    monkeypatch.setenv("QDNN_CPU_BF16", "0")


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
