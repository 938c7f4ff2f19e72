"""The mode-batched step (trainer.mode_batch) equals the per-mode step.

Tolerances (float32 on the CPU, summation order differs between a grouped convolution
and five plain ones): the loss to 1e-5; every weight's and BN parameter's gradient to
1e-4 relative (L2 norm of the difference over the norm of the gradient); the scalar
clip/step parameters of PACT and LSQ to 1e-2 relative, because their gradient is a sum
over a whole activation tensor of straight-through terms that cancel almost exactly,
so reordering that sum moves its last digits most; BN running statistics to 1e-5.
"""
import copy
import random

import pytest
import torch

from conftest import tiny_overrides
from helpers import qdnn, read_csv
from qdnn_cli.engine.evaluation import evaluate
from qdnn_cli.engine.losses import QuantizableLoss
from qdnn_cli.engine.step import mode_losses, random_config
from qdnn_cli.models import build_model
from qdnn_cli.quant import QuantSpec, quantized_layers, set_bit_mode
from qdnn_cli.quant.calibrate import calibrate_quantizers, mark_calibrated
from qdnn_cli.quant.slots import mode_batch, split_slots

MODES = [32, 8, 4, 3, 2]


def _pair(name, quant="dorefa", modes=tuple(MODES), seed=0, bit_specific_bn=True, classes=10, channels=3):
    torch.manual_seed(seed)
    spec = QuantSpec(tuple(modes), quant, quant, bit_specific_bn=bit_specific_bn,
                     weight_scale="mean_abs" if quant != "lsq" else "none")
    kwargs = {"width": 8} if name == "tiny" else {}
    model = build_model(name, spec, classes, channels, **kwargs).train()
    x = torch.randn(8, channels, 8, 8)
    y = torch.randint(0, classes, (8,))
    calibrate_quantizers(model, x, spec.modes)
    mark_calibrated(model)
    return model, copy.deepcopy(model), x, y


def _step(model, x, y, modes, loss_fn, batched):
    _, per_mode = mode_losses(model, x, y, modes, loss_fn, True, backward=torch.Tensor.backward, batched=batched)
    return per_mode


def _assert_same_state(a, b, scalar_rtol=1e-2):
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert (pa.grad is None) == (pb.grad is None), name
        if pa.grad is None:
            continue
        rel = ((pa.grad - pb.grad).norm() / pa.grad.norm().clamp_min(1e-12)).item()
        scalar = ".alpha." in name or ".step." in name
        assert rel <= (scalar_rtol if scalar else 1e-4), (name, rel)
    for (name, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers()):
        if ba.dtype.is_floating_point:
            torch.testing.assert_close(ba, bb, rtol=1e-5, atol=1e-5, msg=name)
        else:
            assert torch.equal(ba, bb), name


@pytest.mark.parametrize("quant", ["dorefa", "pact", "lsq"])
@pytest.mark.parametrize("model_name", ["resnet20", "preact_resnet20", "tiny"])
def test_batched_step_equals_per_mode_step(quant, model_name):
    channels = 1 if model_name == "tiny" else 3
    per_mode_model, batched_model, x, y = _pair(model_name, quant, channels=channels)
    loss_fn = QuantizableLoss()
    a = _step(per_mode_model, x, y, MODES, loss_fn, False)
    b = _step(batched_model, x, y, MODES, loss_fn, True)
    assert list(a) == list(b) == MODES
    for m in MODES:
        torch.testing.assert_close(a[m][0], b[m][0], rtol=0, atol=1e-5)  # CE
        assert a[m][1] == b[m][1] and a[m][2] == b[m][2]                  # top-1, top-5 hits
    _assert_same_state(per_mode_model, batched_model)


@pytest.mark.parametrize("loss", [dict(target="ensemble", fp_weight=0.5, top_weight=4.0),
                                  dict(target="next", reduction="mean", temperature=2.0),
                                  dict(consistency=False)])
def test_every_loss_option_gives_the_same_gradients(loss):
    a_model, b_model, x, y = _pair("resnet20")
    loss_fn = QuantizableLoss(**loss)
    _step(a_model, x, y, MODES, loss_fn, False)
    _step(b_model, x, y, MODES, loss_fn, True)
    _assert_same_state(a_model, b_model)


def test_sandwich_subset_leaves_the_other_modes_bn_untouched():
    a_model, b_model, x, y = _pair("resnet20")
    before = copy.deepcopy(b_model.state_dict())
    _step(a_model, x, y, [32, 4, 2], QuantizableLoss(), False)
    _step(b_model, x, y, [32, 4, 2], QuantizableLoss(), True)
    _assert_same_state(a_model, b_model)
    after = b_model.state_dict()
    assert torch.equal(after["bn1.bn.8.running_mean"], before["bn1.bn.8.running_mean"])
    assert not torch.equal(after["bn1.bn.4.running_mean"], before["bn1.bn.4.running_mean"])


def test_shared_bn_statistics_move_once_per_mode_in_order():
    a_model, b_model, x, y = _pair("resnet20", bit_specific_bn=False)
    _step(a_model, x, y, MODES, QuantizableLoss(), False)
    _step(b_model, x, y, MODES, QuantizableLoss(), True)
    _assert_same_state(a_model, b_model)
    assert int(b_model.state_dict()["bn1.bn.shared.num_batches_tracked"]) == len(MODES)


def test_mixed_configurations_and_wa_modes_in_one_batch():
    modes = ("w2a4", 2, 4, 32)
    a_model, b_model, x, y = _pair("resnet20", modes=modes)
    desc = [32, 4, "w2a4", 2]
    gen = random.Random(0)
    configs = [random_config(list(quantized_layers(a_model)), desc, gen) for _ in range(2)]
    steps = desc + configs  # what mode_sampling=mixed trains: every mode, then per-layer configurations
    a = _step(a_model, x, y, steps, QuantizableLoss(), False)
    b = _step(b_model, x, y, steps, QuantizableLoss(), True)
    for m in a:
        torch.testing.assert_close(a[m][0], b[m][0], rtol=0, atol=1e-5)
    _assert_same_state(a_model, b_model)


def test_evaluation_in_one_batch_equals_mode_by_mode():
    model, _, x, y = _pair("resnet20")
    _step(model, x, y, MODES, QuantizableLoss(), False)  # BN statistics that differ per mode
    loader = [(x, y), (x.flip(0), y.flip(0))]
    one_by_one = evaluate(model, loader, MODES)
    batched = evaluate(model, loader, MODES, batched=True)
    for m in MODES:
        for k in ("loss", "top1", "top5"):
            assert batched[m][k] == pytest.approx(one_by_one[m][k], abs=1e-4), (m, k)


def test_slots_are_cleared_and_the_mode_restored_after_a_batch():
    model, _, x, _ = _pair("tiny", channels=1)
    set_bit_mode(model, 4)
    model.eval()
    before = model(x)
    with mode_batch(model, MODES):
        logits = split_slots(model(x), len(MODES))
    assert len(logits) == len(MODES) and logits[0].shape == before.shape
    torch.testing.assert_close(logits[MODES.index(4)], before, rtol=0, atol=1e-5)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # back to plain 4-bit


def test_training_with_mode_batch_matches_training_without(tmp_path):
    """Two epochs of the real engine: same per-mode numbers to the tolerance of the step."""
    runs = {}
    for batched in (False, True):
        out = tmp_path / f"batched{int(batched)}"
        r = qdnn("train", "quickstart", *tiny_overrides(out, f"trainer.mode_batch={str(batched).lower()}"))
        assert r.exit_code == 0, r.output
        runs[batched] = read_csv(out / "metrics.csv")
    assert len(runs[True]) == len(runs[False])
    for a, b in zip(runs[False], runs[True]):
        assert (a["epoch"], a["mode"], a["split"]) == (b["epoch"], b["mode"], b["split"])
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=2e-3), (a, b)


def test_mode_batch_with_sync_bn_is_refused_in_one_line(tmp_path):
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", "trainer.mode_batch=true", "trainer.sync_bn=true"))
    assert r.exit_code == 2
    assert "trainer.mode_batch" in r.output and "Traceback" not in r.output
