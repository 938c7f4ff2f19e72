"""The mode-batched step (trainer.mode_batch) equals the per-mode step.

The comparisons run in float64. In float32 the two differ in summation order (a grouped
convolution against five plain ones) by ~1e-7, and that is enough to move an activation
across a rounding boundary now and then: one flipped 8-bit level or ReLU mask changes a
gradient by a percent, which no honest float32 tolerance separates from a bug. In
float64 nothing flips, so the tolerances are tight: every gradient to 1e-9 relative (L2
norm of the difference over the norm of the gradient), losses and BN statistics to
1e-10. (Measured: 1e-12 at worst, PACT and LSQ clip/step gradients, on ResNet-20,
PreAct ResNet-20, ResNet-18 and the tiny net.) An engine run in float32 is compared
after one step, before rounding flips can compound.
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


# Float comparisons here: float64 for every equivalence (see the module docstring); one engine step in
# float32 against a measured bound.
pytestmark = pytest.mark.numerics

MODES = [32, 8, 4, 3, 2]


def _pair(name, quant="dorefa", modes=tuple(MODES), seed=0, bit_specific_bn=True, classes=10, channels=3):
    torch.manual_seed(seed)
    spec = QuantSpec(tuple(modes), quant, quant, bit_specific_bn=bit_specific_bn,
                     weight_scale="mean_abs" if quant != "lsq" else "none")
    kwargs = {"width": 8} if name == "tiny" else {}
    model = build_model(name, spec, classes, channels, **kwargs).double().train()
    x = torch.randn(8, channels, 8, 8, dtype=torch.float64)
    y = torch.randint(0, classes, (8,))
    calibrate_quantizers(model, x, spec.modes)
    mark_calibrated(model)
    return model, copy.deepcopy(model), x, y


def _step(model, x, y, modes, loss_fn, batched):
    _, per_mode = mode_losses(model, x, y, modes, loss_fn, True, backward=torch.Tensor.backward, batched=batched)
    return per_mode


def _assert_same_state(a, b):
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert (pa.grad is None) == (pb.grad is None), name
        if pa.grad is None:
            continue
        rel = ((pa.grad - pb.grad).norm() / pa.grad.norm().clamp_min(1e-30)).item()
        assert rel <= 1e-9, (name, rel)
    for (name, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers()):
        if ba.dtype.is_floating_point:
            torch.testing.assert_close(ba, bb, rtol=1e-10, atol=1e-10, msg=name)
        else:
            assert torch.equal(ba, bb), name


# ResNet-18 in float64 is the suite's heaviest model (11M weights, every mode's quantized
# copy): its DoReFa step stays in the default suite, PACT and LSQ, whose slot mechanics the
# three other models cover, run with the slow tests.
_HEAVY = pytest.mark.slow


@pytest.mark.parametrize("quant, model_name", [
    *[(q, m) for m in ("resnet20", "preact_resnet20", "tiny") for q in ("dorefa", "pact", "lsq")],
    ("dorefa", "resnet18"),
    pytest.param("pact", "resnet18", marks=_HEAVY), pytest.param("lsq", "resnet18", marks=_HEAVY),
])
def test_batched_step_equals_per_mode_step(quant, model_name):
    channels = 1 if model_name == "tiny" else 3
    per_mode_model, batched_model, x, y = _pair(model_name, quant, channels=channels)
    loss_fn = QuantizableLoss()
    a = _step(per_mode_model, x, y, MODES, loss_fn, False)
    b = _step(batched_model, x, y, MODES, loss_fn, True)
    assert list(a) == list(b) == MODES
    for m in MODES:
        torch.testing.assert_close(a[m][0], b[m][0], rtol=0, atol=1e-10)  # CE
        assert a[m][1] == b[m][1] and a[m][2] == b[m][2]                  # top-1, top-5 hits
    _assert_same_state(per_mode_model, batched_model)


@pytest.mark.parametrize("loss", [dict(target="ensemble", fp_weight=0.5, top_weight=4.0),
                                  dict(target="next", reduction="mean", temperature=2.0),
                                  dict(consistency=False)])
def test_every_loss_option_gives_the_same_gradients(loss):
    a_model, b_model, x, y = _pair("tiny", channels=1)  # the loss sees only logits: the smallest model will do
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
        torch.testing.assert_close(a[m][0], b[m][0], rtol=0, atol=1e-10)
    _assert_same_state(a_model, b_model)


def test_evaluation_in_one_batch_equals_mode_by_mode():
    model, _, x, y = _pair("resnet20")
    _step(model, x, y, MODES, QuantizableLoss(), False)  # BN statistics that differ per mode
    loader = [(x, y), (x.flip(0), y.flip(0))]
    one_by_one = evaluate(model, loader, MODES)
    batched = evaluate(model, loader, MODES, batched=True)
    for m in MODES:
        for k in ("loss", "top1", "top5"):
            assert batched[m][k] == pytest.approx(one_by_one[m][k], abs=1e-9), (m, k)


def test_slots_are_cleared_and_the_mode_restored_after_a_batch():
    model, _, x, _ = _pair("tiny", channels=1)
    set_bit_mode(model, 4)
    model.eval()
    before = model(x)
    with mode_batch(model, MODES):
        logits = split_slots(model(x), len(MODES))
    assert len(logits) == len(MODES) and logits[0].shape == before.shape
    torch.testing.assert_close(logits[MODES.index(4)], before, rtol=0, atol=1e-10)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # back to plain 4-bit


def test_training_with_mode_batch_matches_training_without(tmp_path):
    """The real engine in float32, one optimizer step: the same losses and weights."""
    runs, weights = {}, {}
    for batched in (False, True):
        out = tmp_path / f"batched{int(batched)}"
        r = qdnn("train", "quickstart", *tiny_overrides(out, f"trainer.mode_batch={str(batched).lower()}",
                                                        "data.train_size=32", "trainer.epochs=1"))
        assert r.exit_code == 0, r.output
        runs[batched] = read_csv(out / "metrics.csv")
        state = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
        weights[batched] = {k: v for k, v in state.items() if k.endswith("weight") or k.endswith("bias")}
    assert len(runs[True]) == len(runs[False]) == 2 * 5
    for a, b in zip(runs[False], runs[True]):
        assert (a["epoch"], a["mode"], a["split"]) == (b["epoch"], b["mode"], b["split"])
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-4), (a, b)
    # float32: the odd rounding flip moves a weight by up to ~1e-4 of its size after a step
    for k, v in weights[False].items():
        torch.testing.assert_close(weights[True][k], v, rtol=1e-3, atol=1e-5, msg=k)


def test_mode_batch_with_sync_bn_is_refused_in_one_line(tmp_path):
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", "trainer.mode_batch=true", "trainer.sync_bn=true"))
    assert r.exit_code == 2
    assert "trainer.mode_batch" in r.output and "Traceback" not in r.output


# ----------------------------------------------------------------------------- private BN statistics
def _private_and_shared(seed=0):
    """A private-statistics model and a shared-BN one with the very same weights."""
    torch.manual_seed(seed)
    private = build_model("resnet20", QuantSpec(bit_specific_bn=False, private_stats=True, weight_scale="mean_abs"),
                          10, 3).double().train()
    shared = build_model("resnet20", QuantSpec(bit_specific_bn=False, weight_scale="mean_abs"), 10, 3).double()
    state, own = private.state_dict(), shared.state_dict()
    for k in own:
        if ".bn.shared." in k and k.rsplit(".", 1)[-1] in ("weight", "bias"):
            own[k] = state[k.replace("bn.shared.", "")]
        elif k in state:
            own[k] = state[k]
    shared.load_state_dict(own)
    return private, shared.train()


def test_private_statistics_train_exactly_as_a_shared_bn_and_keep_each_modes_statistics():
    private, shared = _private_and_shared()
    x, y = torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))
    for m in MODES:  # training forward: batch statistics and one γ, β, as a shared BN
        set_bit_mode(private, m)
        set_bit_mode(shared, m)
        torch.testing.assert_close(private(x), shared(x), rtol=0, atol=1e-12)
    # each mode's running statistics are its own: after one step the FP mode's and the
    # 2-bit mode's differ, and equal a plain BN's update from that mode's batch
    fresh, _ = _private_and_shared()
    _step(fresh, x, y, MODES, QuantizableLoss(), False)
    st = fresh.state_dict()
    assert not torch.allclose(st["layer1.0.bn1.bn.32.running_mean"], st["layer1.0.bn1.bn.2.running_mean"])
    assert int(st["layer1.0.bn1.bn.2.num_batches_tracked"]) == 1 and "layer1.0.bn1.weight" in st
    check, _ = _private_and_shared()
    set_bit_mode(check, 2)
    seen = {}
    check.layer1[0].conv1.register_forward_hook(lambda mod, inp, out: seen.setdefault("out", out.detach()))
    check(x)
    var, mean = torch.var_mean(seen["out"], dim=(0, 2, 3), correction=1)
    torch.testing.assert_close(st["layer1.0.bn1.bn.2.running_mean"], 0.1 * mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(st["layer1.0.bn1.bn.2.running_var"], 0.9 + 0.1 * var, rtol=0, atol=1e-12)


def test_private_statistics_in_a_mode_batch_equal_mode_by_mode():
    a, _ = _private_and_shared()
    b = copy.deepcopy(a)
    x, y = torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))
    _step(a, x, y, MODES, QuantizableLoss(), False)
    _step(b, x, y, MODES, QuantizableLoss(), True)
    _assert_same_state(a, b)


def test_a_private_statistics_run_trains_evaluates_searches_and_reports(tmp_path):
    run = tmp_path / "run"
    r = qdnn("train", "quickstart", *tiny_overrides(run, "quant.bn=private_stats", "quant.bits=[2,4,32]"))
    assert r.exit_code == 0, r.output
    state = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert "bn1.weight" in state and "bn1.bn.2.running_mean" in state and "bn1.bn.2.weight" not in state
    r = qdnn("eval", run, "--bits", "3,4", "--calibrate-bn", "2", "--device", "cpu")  # 3 was never trained
    assert r.exit_code == 0, r.output
    r = qdnn("report", run, "--no-costs")
    assert r.exit_code == 0 and "private BN statistics" in r.output, r.output
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "bad", "quant.bn=per_mode"))
    assert r.exit_code == 2 and "quant.bn='per_mode' is not allowed" in r.output
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "bad2", "quant.bn=bit_specific",
                                                    "quant.bit_specific_bn=false"))
    assert r.exit_code == 2 and "contradicts" in r.output


def test_mixed_configurations_are_not_cached_step_after_step():
    """A mode batch caches each layer's slot settings per tuple of bit modes; per-layer
    configurations are drawn anew every step and must not pile up in that cache."""
    model, _, x, y = _pair("tiny", channels=1)
    gen = random.Random(0)
    layers = list(quantized_layers(model))
    for _ in range(5):
        steps = MODES + [random_config(layers, MODES, gen)]
        _step(model, x, y, steps, QuantizableLoss(), True)
    _step(model, x, y, MODES, QuantizableLoss(), True)
    assert list(model.__dict__["_qdnn_slot_settings"]) == [tuple(MODES)]
