"""LSQ steps are set by an explicit calibration pass before training: BN untouched,
equal on every rank, and no host sync left in the forward (a whole step compiles)."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import pytest

from conftest import inductor_builds, tiny_overrides
from helpers import qdnn
from qdnn_cli.models import build_model
from qdnn_cli.quant import QuantSpec
from qdnn_cli.quant.calibrate import calibrate_quantizers, mark_calibrated, needs_calibration
from qdnn_cli.quant.quantizers import LSQQuantizer


# Float comparisons here: exact: calibration is elementwise statistics of one batch, computed by the same
# kernels on each side (ranks, or the lazy and explicit forms in one process).
pytestmark = pytest.mark.numerics

MODES = (2, 4, 32)


def _lsq_net(seed=0):
    torch.manual_seed(seed)
    return build_model("tiny", QuantSpec(MODES, "lsq", "lsq"), 10, 3, width=8)


def _steps(net):
    return {f"{n}.{k}": p.detach().clone() for n, m in net.named_modules() if isinstance(m, LSQQuantizer)
            for k, p in m.step.items()}


def test_calibration_sets_every_step_from_the_batch_and_leaves_bn_alone():
    net = _lsq_net()
    x = torch.randn(16, 3, 8, 8)
    bn_before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    assert needs_calibration(net)
    calibrate_quantizers(net, x, MODES)
    assert not needs_calibration(net)
    assert all(v.item() > 0 for v in _steps(net).values())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in bn_before.items())
    # the same values the lazy first-forward initialisation gives
    lazy = _lsq_net()
    lazy.train()
    from qdnn_cli.quant import set_bit_mode

    for m in sorted(MODES, reverse=True):
        set_bit_mode(lazy, m)
        lazy(x)
    for k, v in _steps(net).items():
        torch.testing.assert_close(v, _steps(lazy)[k], msg=k)


def test_training_calibrates_before_the_first_step(tmp_path, monkeypatch):
    from qdnn_cli.engine.loop import Trainer

    seen = {}
    original = Trainer.train_step

    def spy(self, *a, **k):
        seen.setdefault("steps_at_first_step", {k2: v.item() for k2, v in _steps(self.model).items()})
        return original(self, *a, **k)

    monkeypatch.setattr(Trainer, "train_step", spy)
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", "quant=lsq", "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    assert seen["steps_at_first_step"] and all(v > 0 for v in seen["steps_at_first_step"].values())


def _rank(rank, world, init_file, out_file):
    from qdnn_cli.engine.distributed import DistContext

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    net = _lsq_net(seed=0)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(100 + rank)) * (1 + rank)  # own shard
    calibrate_quantizers(net, x, MODES)
    DistContext(rank, world).broadcast_model(net)
    torch.save(_steps(net), f"{out_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_calibrated_steps_are_equal_across_two_gloo_ranks(tmp_path):
    out = tmp_path / "steps"
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    a, b = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and they are rank 0's: its own shard's values, which rank 1's shard would not give
    net = _lsq_net(seed=0)
    calibrate_quantizers(net, torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(100)), MODES)
    assert all(torch.equal(a[k], v) for k, v in _steps(net).items())


@inductor_builds
def test_calibrated_lsq_compiles_as_one_whole_step_graph():
    from qdnn_cli.engine.compile import compile_step, whole_step
    from qdnn_cli.engine.losses import QuantizableLoss

    net = _lsq_net().train()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    calibrate_quantizers(net, x, MODES)
    mark_calibrated(net)
    step = compile_step(whole_step(net, QuantizableLoss(), True), 1)  # fullgraph: a host sync would fail
    loss, per_mode = step(x, y, tuple(sorted(MODES, reverse=True)))
    loss.backward()
    assert set(per_mode) == set(MODES) and torch.isfinite(loss)
    assert all(p.grad is not None for n, p in net.named_parameters() if ".step." in n and not n.endswith("32"))
