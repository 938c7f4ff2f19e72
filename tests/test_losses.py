import torch

from qdnn_cli.engine.losses import QuantizableLoss, consistency_kl


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
