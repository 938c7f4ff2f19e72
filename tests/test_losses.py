import pytest
import torch

from qdnn_cli.engine.losses import QuantizableLoss, consistency_kl


# Float comparisons here: loss formulas against their definition on random logits: default float32
# tolerances (allclose rtol 1e-5; assert_close rtol 1.3e-6, atol 1e-5), far above any kernel's
# reordering of a 10-class softmax.
pytestmark = pytest.mark.numerics


def test_consistency_zero_when_modes_agree_and_grows_with_disagreement():
    torch.manual_seed(0)
    z = torch.randn(16, 10)
    assert consistency_kl(z, z).abs().item() < 1e-6
    small = consistency_kl(z + 0.1 * torch.randn(16, 10), z).item()
    large = consistency_kl(z + 1.0 * torch.randn(16, 10), z).item()
    assert 0 < small < large


def test_total_loss_formula_fp_and_next_targets():
    torch.manual_seed(1)
    y = torch.randint(0, 10, (8,))
    logits = {m: torch.randn(8, 10) for m in (32, 4, 2)}
    ce = {m: torch.nn.functional.cross_entropy(v, y) for m, v in logits.items()}
    fp = QuantizableLoss(target="fp", weight=0.5, ce_weight=2.0, temperature=2.0)
    kl = lambda s, t: consistency_kl(logits[s], logits[t], 2.0)
    expected = ce[32] + 2 * ce[4] + 0.5 * kl(4, 32) + 2 * ce[2] + 0.5 * kl(2, 32)
    assert torch.allclose(fp.total(logits, y), expected)
    nxt = QuantizableLoss(target="next", weight=0.5, ce_weight=2.0, temperature=2.0)
    expected = ce[32] + 2 * ce[4] + 0.5 * kl(4, 32) + 2 * ce[2] + 0.5 * kl(2, 4)
    assert torch.allclose(nxt.total(logits, y), expected)
    off = QuantizableLoss(consistency=False)
    assert torch.allclose(off.total(logits, y), ce[32] + ce[4] + ce[2])


def test_identical_logits_leave_only_cross_entropy():
    y = torch.randint(0, 5, (6,))
    z = torch.randn(6, 5)
    loss = QuantizableLoss()
    same = {m: z.clone() for m in (32, 8, 2)}
    assert torch.allclose(loss.total(same, y), 3 * torch.nn.functional.cross_entropy(z, y))


def test_teacher_is_detached():
    z32 = torch.randn(4, 5, requires_grad=True)
    z2 = torch.randn(4, 5, requires_grad=True)
    consistency_kl(z2, z32).backward()
    assert z32.grad is None and z2.grad is not None


def _logits(seed=2, modes=(32, 4, 2)):
    torch.manual_seed(seed)
    return {m: torch.randn(8, 10) for m in modes}, torch.randint(0, 10, (8,))


def test_mean_reduction_divides_the_sum_by_the_number_of_modes():
    logits, y = _logits()
    total = QuantizableLoss().total(logits, y)
    assert torch.allclose(QuantizableLoss(reduction="mean").total(logits, y), total / 3)


def test_ensemble_teacher_is_the_mean_prediction_of_the_higher_modes():
    from qdnn_cli.engine.losses import ensemble_logits

    logits, y = _logits()
    T = 2.0
    mean_p = (torch.softmax(logits[32] / T, 1) + torch.softmax(logits[4] / T, 1)) / 2
    teacher = ensemble_logits([logits[32], logits[4]], T)
    torch.testing.assert_close(torch.softmax(teacher / T, 1), mean_p)
    ce = {m: torch.nn.functional.cross_entropy(v, y) for m, v in logits.items()}
    ens = QuantizableLoss(target="ensemble", temperature=T)
    expected = ce[32] + ce[4] + consistency_kl(logits[4], logits[32], T) + ce[2] + consistency_kl(logits[2], teacher, T)
    torch.testing.assert_close(ens.total(logits, y), expected)


def test_fp_weight_adds_a_term_towards_the_lower_modes_and_only_moves_the_top_mode():
    logits, y = _logits()
    z = {m: v.clone().requires_grad_(True) for m, v in logits.items()}
    base = QuantizableLoss().total(logits, y)
    both = QuantizableLoss(fp_weight=0.5)
    lower_mean = (torch.softmax(logits[4], 1) + torch.softmax(logits[2], 1)) / 2
    expected = base + 0.5 * consistency_kl(logits[32], torch.log(lower_mean))
    torch.testing.assert_close(both.total(logits, y), expected)
    # the extra term's gradient reaches the top mode only (lower modes are its detached teachers)
    extra = both.top_term(z[32], [z[4].detach(), z[2].detach()])
    extra.backward()
    assert z[32].grad is not None and z[4].grad is None


def test_consistency_warmup_ramps_lambda_from_zero():
    loss = QuantizableLoss(weight=2.0, fp_weight=1.0, warmup_epochs=4)
    assert [loss.at_epoch(e).weight for e in (0, 1, 2, 4, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert loss.at_epoch(2).fp_weight == 0.5
    assert QuantizableLoss(weight=2.0).at_epoch(0).weight == 2.0


def test_step_with_fp_weight_equals_the_backward_of_the_total():
    """The eager step (per-mode backward, top mode last) gives the gradients of L."""
    import copy

    from qdnn_cli.engine.step import mode_losses
    from qdnn_cli.models import build_model
    from qdnn_cli.quant import QuantSpec, set_bit_mode

    torch.manual_seed(0)
    modes = [32, 4, 2]
    net = build_model("tiny", QuantSpec(tuple(modes)), 10, 3, width=8, norm=False).train()
    ref = copy.deepcopy(net)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    loss_fn = QuantizableLoss(target="ensemble", fp_weight=0.7, reduction="mean")
    mode_losses(net, x, y, modes, loss_fn, True, backward=torch.Tensor.backward)
    logits = {}
    for m in modes:
        set_bit_mode(ref, m)
        logits[m] = ref(x)
    loss_fn.total(logits, y).backward()
    for (name, a), b in zip(net.named_parameters(), ref.parameters()):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_top_weight_scales_only_the_top_modes_cross_entropy():
    logits, y = _logits()
    ce32 = torch.nn.functional.cross_entropy(logits[32], y)
    base = QuantizableLoss().total(logits, y)
    assert torch.allclose(QuantizableLoss(top_weight=4.0).total(logits, y), base + 3 * ce32)
    # the logged CE of the top mode stays the plain CE
    loss, ce = QuantizableLoss(top_weight=4.0).mode_loss(logits[32], y, None, True)
    assert torch.allclose(loss, 4 * ce32) and torch.allclose(ce, ce32)


def test_a_dedicated_run_ignores_top_weight(tmp_path):
    from omegaconf import OmegaConf

    from qdnn_cli.config import compose
    from qdnn_cli.engine.loop import Trainer

    cfg = compose("quickstart", ["trainer.kind=dedicated", "quant.bits=[32]", "loss.top_weight=4",
                                 f"out_dir={tmp_path / 'r'}", "trainer.device=cpu"])
    trainer = Trainer(cfg, tmp_path / "r")
    assert trainer.loss_fn.top_weight == 1.0
    assert OmegaConf.select(cfg, "loss.top_weight") == 4.0
