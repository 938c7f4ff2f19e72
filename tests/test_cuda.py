"""The CUDA path: quantizers, device-side data, AMP, channels_last, compile, no host syncs.

Every test here needs a CUDA device and skips with that reason elsewhere; they run in
the device check (``scripts/device_check.sh``) on a lent GPU.
"""
import contextlib

import pytest
import torch

from helpers import affine_reference, qdnn, read_csv
from qdnn_cli.data import Augment, TensorBatches
from qdnn_cli.engine.compile import compile_model
from qdnn_cli.engine.step import EpochStats, ModeTimer, mode_losses
from qdnn_cli.engine.losses import QuantizableLoss
from qdnn_cli.models import build_model
from qdnn_cli.quant import QuantSpec, set_bit_mode
from qdnn_cli.quant.quantizers import dorefa_weight, naive_dorefa_weight, naive_quantize_unit, quantize_unit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MODES = (2, 3, 4, 8, 32)


def cuda_overrides(out_dir, *extra):
    return ["data=synthetic", "data.train_size=256", "data.val_size=64", "data.image_size=16", "data.num_classes=10",
            "model=tiny", "model.kwargs.width=16", "trainer.epochs=2", "trainer.batch_size=64",
            "trainer.eval_batch_size=64", "trainer.device=cuda", "trainer.progress=false", f"out_dir={out_dir}", *extra]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_fast_quantizers_equal_reference_on_cuda(bits):
    g = torch.Generator(device="cuda").manual_seed(bits)
    x = (torch.randn(64, 16, 8, 8, device="cuda", generator=g) * 0.7 + 0.4).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = quantize_unit(x, bits), naive_quantize_unit(x_ref, bits)
    assert torch.equal(y, affine_reference(x.detach(), bits))  # bit for bit
    assert (y - y_ref).abs().max() <= 1.2e-7  # research code's round(x·n)/n: same level
    gy = torch.randn_like(y)
    y.backward(gy)
    y_ref.backward(gy)
    assert torch.equal(x.grad, x_ref.grad)
    if bits > 1:
        w = torch.randn(32, 16, 3, 3, device="cuda", generator=g)
        assert (dorefa_weight(w, bits) - naive_dorefa_weight(w, bits)).abs().max() <= 3e-7


def test_quantizers_stay_float32_under_cuda_autocast():
    x = torch.rand(8, 4, 5, 5, device="cuda").to(torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = quantize_unit(x, 8)
    assert y.dtype == torch.float32
    assert torch.equal(y, affine_reference(x.float(), 8))  # the float32 8-bit grid, not bf16's


def test_device_side_batches_equal_cpu_batches():
    """Same seed, same epoch: the GPU loader yields the CPU loader's crops, flips and labels."""
    images = torch.randint(0, 256, (300, 3, 12, 12), dtype=torch.uint8)
    labels = torch.arange(300) % 7
    kw = dict(batch_size=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), shuffle=True,
              augment=Augment(crop_padding=2, flip=True), seed=5)
    cpu = TensorBatches(images, labels, device=torch.device("cpu"), **kw)
    gpu = TensorBatches(images, labels, device=torch.device("cuda"), channels_last=True, **kw)
    for loader in (cpu, gpu):
        loader.set_epoch(3)
    n = 0
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and xg.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-5)
        n += yc.numel()
    assert n == 300


def _step_parts(amp: bool, channels_last: bool):
    torch.manual_seed(0)
    model = build_model("resnet20", QuantSpec(MODES), num_classes=100).cuda().train()
    x = torch.randn(32, 3, 32, 32, device="cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (32,), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    amp_ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    return model, x, y, opt, amp_ctx


def test_batches_and_joint_step_have_no_host_sync():
    """Fetching a device-side batch and a whole training step (5 modes, bf16,
    channels_last, the engine's running statistics and per-mode CUDA-event timing)
    never wait for the GPU."""
    model, x, y, opt, amp_ctx = _step_parts(True, True)
    loss_fn = QuantizableLoss()
    loader = TensorBatches(torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8), torch.arange(96) % 100, 32,
                           (0.5,) * 3, (0.25,) * 3, torch.device("cuda"), shuffle=True,
                           augment=Augment(crop_padding=4, flip=True), channels_last=True)
    stats, timer = EpochStats(), ModeTimer(torch.device("cuda"))

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        _, per_mode = mode_losses(model, xb, yb, sorted(MODES, reverse=True), loss_fn, True, model, amp_ctx,
                                  torch.Tensor.backward, timer)
        for m, (ce, top1, top5) in per_mode.items():
            stats.add(m, ce, top1, top5, yb.numel())
        opt.step()

    for _ in range(2):  # warm-up outside the check (cuDNN autotune, allocator)
        step(x, y)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for xb, yb in loader:
            step(xb, yb)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert set(timer.totals()) == set(MODES) and all(v > 0 for v in timer.totals().values())


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_joint_training_on_cuda_fits_a_batch(channels_last):
    model, x, y, opt, amp_ctx = _step_parts(True, channels_last)
    loss_fn = QuantizableLoss()
    modes = sorted(MODES, reverse=True)

    def losses():  # in train mode: a few steps leave BN running statistics meaningless
        with torch.no_grad(), amp_ctx():
            out = {}
            for m in modes:
                set_bit_mode(model, m)
                out[m] = torch.nn.functional.cross_entropy(model(x).float(), y).item()
        return out

    before = losses()
    for _ in range(40):
        opt.zero_grad(set_to_none=True)
        mode_losses(model, x, y, modes, loss_fn, True, model, amp_ctx, torch.Tensor.backward)
        opt.step()
    after = losses()
    for m in modes:
        assert after[m] < before[m] * 0.5, (m, before[m], after[m])


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_forward_matches_eager_in_every_mode(mode):
    torch.manual_seed(0)
    net = build_model("tiny", QuantSpec(MODES), 10, 3, width=16).cuda().train()
    compiled = compile_model(net, len(MODES), mode)
    x = torch.randn(16, 3, 16, 16, device="cuda")
    for _ in range(2):  # a second cycle through the modes reuses the graphs (no recompile error)
        for m in sorted(MODES, reverse=True):
            set_bit_mode(net, m)
            with torch.no_grad():
                net.eval()
                want = net(x)
                got = compiled(x).clone()
                net.train()
            # cuDNN may pick other (TF32) convolution algorithms for the compiled graph, and a
            # value on a rounding boundary can land on the neighbouring level: close, not equal
            assert (got - want).norm() / want.norm() < 1e-2, m


@pytest.mark.parametrize("extra", [["trainer.amp=fp16", "trainer.channels_last=true"],
                                   ["trainer.amp=bf16", "trainer.compile=true"],
                                   ["trainer.amp=bf16", "trainer.compile=reduce-overhead", "trainer.channels_last=true"],
                                   ["trainer.amp=bf16", "trainer.compile=reduce-overhead", "trainer.compile_scope=step",
                                    "trainer.mode_sampling=sandwich"]],
                         ids=["fp16-cl", "bf16-compile", "bf16-cudagraphs-cl", "bf16-cudagraphs-whole-step-sandwich"])
def test_cuda_training_run_records_per_mode_speed_and_memory(tmp_path, extra):
    r = qdnn("train", "quickstart", *cuda_overrides(tmp_path / "r", *extra))
    assert r.exit_code == 0, r.output
    rows = [x for x in read_csv(tmp_path / "r" / "metrics.csv") if x["split"] == "train" and x["epoch"] == "2"]
    assert {x["mode"] for x in rows} == {str(m) for m in MODES}
    whole_step = "trainer.compile_scope=step" in extra
    for x in rows:
        assert float(x["images_per_s"]) > 0 and float(x["peak_mem_mb"]) > 0
        if not whole_step:  # each mode timed by CUDA events (one graph for all modes: not separable)
            assert float(x["seconds"]) < float(x["epoch_seconds"])
    assert len(read_csv(tmp_path / "r" / "results.csv")) == len(MODES)


@pytest.mark.parametrize("quant", ["dorefa", "pact", "lsq"])
def test_mode_batched_step_equals_the_per_mode_step_on_cuda(quant):
    """Same tolerances as tests/test_mode_batch.py (float32, cuDNN may reorder sums)."""
    import copy

    from qdnn_cli.quant.calibrate import calibrate_quantizers, mark_calibrated

    torch.manual_seed(0)
    spec = QuantSpec(MODES, quant, quant, weight_scale="mean_abs" if quant != "lsq" else "none")
    a = build_model("resnet20", spec, 10, 3).cuda().train().to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 8, 8, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device="cuda")
    calibrate_quantizers(a, x, MODES)
    mark_calibrated(a)
    b = copy.deepcopy(a)
    modes = [32, 8, 4, 3, 2]
    torch.backends.cudnn.deterministic = True
    try:
        pa = mode_losses(a, x, y, modes, QuantizableLoss(), True, backward=torch.Tensor.backward)[1]
        pb = mode_losses(b, x, y, modes, QuantizableLoss(), True, backward=torch.Tensor.backward, batched=True)[1]
    finally:
        torch.backends.cudnn.deterministic = False
    for m in modes:
        torch.testing.assert_close(pa[m][0], pb[m][0], rtol=0, atol=1e-4)
    for (name, ga), (_, gb) in zip(a.named_parameters(), b.named_parameters()):
        if ga.grad is not None:
            rel = ((ga.grad - gb.grad).norm() / ga.grad.norm().clamp_min(1e-12)).item()
            assert rel <= (1e-2 if (".alpha." in name or ".step." in name) else 1e-3), (name, rel)


def test_packed_runs_train_on_cuda(tmp_path):
    r = qdnn("ablate", "quickstart", "--launcher", "packed", "--jobs", "4",
             *cuda_overrides(tmp_path / "g", "quant.bits=[2,32]", "trainer.amp=bf16"))
    assert r.exit_code == 0, r.output
    for leaf in ("full", "no_consistency", "shared_bn", "no_consistency_shared_bn"):
        rows = read_csv(tmp_path / "g" / leaf / "results.csv")
        assert [row["mode"] for row in rows] == ["32", "2"]
