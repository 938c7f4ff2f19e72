import pytest
import torch

from helpers import affine_reference

from qdnn_cli.quant.quantizers import (
    DoReFaAct, LSQAct, LSQWeight, PACTAct, dorefa_weight, naive_dorefa_weight, naive_quantize_unit, quantize_unit,
)


# Float comparisons here: exact where a fused kernel is checked against the same float32 formula (elementwise
# operations round alike on every instruction set); explicit bounds (<= 3e-7, rtol 1e-5)
# where the formula differs in operation order.
pytestmark = pytest.mark.numerics


@pytest.mark.parametrize("bits", range(1, 9))
def test_unit_quantizer_levels_and_formula(bits):
    x = torch.rand(200_000, generator=torch.Generator().manual_seed(bits)) * 1.4 - 0.2
    q = quantize_unit(x, bits)
    assert q.unique().numel() <= 2**bits
    assert torch.equal(q, affine_reference(x, bits))  # bit for bit
    # the research-code round(x·n)/n gives the same level, up to the last float bit
    assert (q - naive_quantize_unit(x, bits)).abs().max() <= 1.2e-7


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dorefa_weight_levels_and_naive_agreement(bits):
    w = torch.randn(64, 32, 3, 3)
    q = dorefa_weight(w, bits)
    assert q.unique().numel() <= 2**bits
    assert q.min() >= -1 and q.max() <= 1
    assert (q - naive_dorefa_weight(w, bits)).abs().max() <= 3e-7
    # the formula: tanh, map to [0,1] by the max, round to k bits, map to [-1,1]
    t = torch.tanh(w)
    unit = t / (2 * t.abs().max()) + 0.5
    assert torch.allclose(q, 2 * torch.round(unit * (2**bits - 1)) / (2**bits - 1) - 1, atol=3e-7)


def test_activation_gradient_is_straight_through_and_clipped():
    x = torch.tensor([-0.5, 0.1, 0.37, 0.8, 1.7], requires_grad=True)
    DoReFaAct((4, 32))(x, 4).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_weight_gradient_flows_straight_through_rounding():
    w = torch.randn(8, 4, requires_grad=True)
    dorefa_weight(w, 2).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_pact_gradients_masked_and_alpha_learns_from_clipped():
    pact = PACTAct((2, 32), init_alpha=1.0)
    x = torch.tensor([-1.0, 0.2, 0.6, 2.0, 3.0], requires_grad=True)
    y = pact(x, 2)
    assert y.unique().numel() <= 4 and y.max().item() == pytest.approx(1.0)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    alpha_grad = pact.alpha["2"].grad.item()
    # two clipped inputs contribute 1 each; the inside ones contribute the rounding residual
    assert alpha_grad == pytest.approx(2.0 + (1 / 3 - 0.2) + (2 / 3 - 0.6), abs=1e-5)
    assert set(pact.alpha.keys()) == {"2"}  # one clip level per quantized mode


def test_lsq_levels_and_masked_gradient():
    q = LSQWeight((3, 32))
    w = torch.randn(1000, requires_grad=True)
    y = q(w, 3)
    step = q.step["3"].detach()
    levels = torch.round(y.detach() / step)
    assert levels.min() >= -4 and levels.max() <= 3 and levels.unique().numel() <= 8
    y.sum().backward()
    inside = ((w / step) >= -4) & ((w / step) <= 3)
    assert torch.equal(w.grad, inside.float())
    act = LSQAct((2, 32))
    a = act(torch.rand(100) * 3, 2)
    assert a.min() >= 0 and torch.round(a / act.step["2"]).max() <= 3


def test_mode_32_passes_input_through_untouched():
    x = torch.randn(10)
    for q in (DoReFaAct((32,)), PACTAct((2, 32)), LSQAct((2, 32))):
        assert q(x, 32) is x


def test_dorefa_weight_gradient_equals_the_straight_through_formula():
    # d/dW of 2·round(u)-1 with u = tanh(W) / (2·max|tanh W|) + 0.5, round passed straight
    # through and the max held constant (detached): g · (1 - tanh²W) / max|tanh W|
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    g = torch.randn_like(w)
    (dorefa_weight(w, 3) * g).sum().backward()
    t = torch.tanh(w.detach())
    torch.testing.assert_close(w.grad, g * (1 - t * t) / t.abs().max(), rtol=1e-5, atol=1e-7)


def test_lsq_step_gradient_equals_the_lsq_formula():
    # LSQ (Esser et al. 2020): dy/ds = round(v) - v inside the range, qmin or qmax where
    # clipped (v = x/s), scaled by 1/sqrt(numel · qmax)
    q = LSQWeight((3, 32))
    with torch.no_grad():
        q.step["3"].fill_(0.25)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(101, generator=gen) * 0.8  # values on a range edge (a null set) are avoided
    g = torch.randn(101, generator=gen)
    (q(x, 3) * g).sum().backward()
    v = x / 0.25
    local = torch.where(v < -4, torch.tensor(-4.0), torch.where(v > 3, torch.tensor(3.0), torch.round(v) - v))
    expected = (g * local).sum() / (101 * 3) ** 0.5
    assert q.step["3"].grad.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("bits", [2, 4])
def test_mean_abs_weight_scale_equals_the_formula(bits):
    w = torch.randn(32, 16, 3, 3) * 0.05
    t = torch.tanh(w)
    n = 2**bits - 1
    plain = 2 * torch.round((t / (2 * t.abs().max()) + 0.5) * n) / n - 1
    torch.testing.assert_close(dorefa_weight(w, bits, scale="mean_abs"), plain * w.abs().mean(), rtol=0, atol=1e-7)
    # the scaled weights have the raw weights' magnitude, not [-1, 1]'s
    assert dorefa_weight(w, bits, scale="mean_abs").abs().max() < 0.5


def test_gradient_through_dorefa_max_follows_dorefas_definition():
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    g = torch.randn_like(w)
    (dorefa_weight(w, 3, max_grad=True) * g).sum().backward()
    # reference: autograd of the same formula with the max in the graph, round straight through
    w2 = w.detach().clone().requires_grad_(True)
    t = torch.tanh(w2)
    unit = t / (2 * t.abs().max()) + 0.5
    (((2 * unit - 1) * g).sum()).backward()
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-6)
    # which differs from the detached max on the largest weight only
    w3 = w.detach().clone().requires_grad_(True)
    (dorefa_weight(w3, 3) * g).sum().backward()
    differs = (w.grad - w3.grad).abs() > 1e-6
    assert differs.sum() == 1 and differs.view(-1)[torch.tanh(w.detach()).abs().argmax()]


def test_a_mode_batch_of_bf16_activations_rounds_in_float32_and_comes_back_in_bf16():
    """trainer.mode_batch=true with trainer.amp=bf16: the batched DoReFa activation
    quantizer gives, slot by slot, exactly what the per-mode one gives (float32 levels
    handed back in bf16, the full-precision slot untouched), and the same gradient."""
    from qdnn_cli.quant.quantizers import DoReFaAct

    bits = (32, 8, 4, 2)
    act = DoReFaAct(bits)
    x = (torch.rand(6, len(bits), 3, 4, 4) * 1.2 - 0.1).to(torch.bfloat16).requires_grad_(True)
    x_each = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = act.forward_slots(x, bits)
        y_each = torch.stack([act(x_each[:, i], b) for i, b in enumerate(bits)], dim=1)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_each)
    assert torch.equal(y[:, 0], x[:, 0])
    levels = torch.round(y[:, 1].detach().float() * 255)
    assert torch.equal(levels, torch.round(affine_reference(x[:, 1].detach().float(), 8) * 255))
    g = torch.randn(y.shape).to(torch.bfloat16)
    y.backward(g)
    y_each.backward(g)
    assert x.grad.dtype == torch.bfloat16 and torch.equal(x.grad, x_each.grad)


@pytest.mark.parametrize("learned", ["pact", "lsq"])
@pytest.mark.parametrize("batched", [False, True], ids=["per_mode", "mode_batch"])
def test_learned_activation_quantizers_hand_bf16_back_in_bf16(learned, batched):
    """PACT and LSQ under trainer.amp=bf16: the levels are the float32 ones, handed back in
    bf16 as DoReFa's are, per mode and mode-batched (where a float32 result would promote
    the untouched full-precision slot to float32 too); the gradients of the input and of
    the learned clip or step are the float32 ones."""
    from qdnn_cli.quant.quantizers import LSQAct, PACTAct

    bits = (32, 8, 4, 2)
    torch.manual_seed(0)
    quant = PACTAct(bits, init_alpha=1.5) if learned == "pact" else LSQAct(bits)
    if learned == "lsq":
        for b, step in zip((8, 4, 2), (0.01, 0.1, 0.4)):
            quant.step[str(b)].data.fill_(step)
        quant.mark_ready()
    x = (torch.rand(6, len(bits), 3, 4, 4) * 2.0 - 0.2).to(torch.bfloat16)
    g = torch.randn(x.shape).to(torch.bfloat16)

    def run(inp, grad):
        inp = inp.clone().requires_grad_(True)
        quant.zero_grad()
        if batched:
            y = quant.forward_slots(inp, bits)
        else:
            y = torch.stack([quant(inp[:, i], b) for i, b in enumerate(bits)], dim=1)
        y.backward(grad)
        return y.detach(), inp.grad, {k: p.grad.clone() for k, p in quant.named_parameters()}

    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, x_grad, param_grads = run(x, g)
    y32, x32_grad, param32_grads = run(x.float(), g.float())
    assert y.dtype == torch.bfloat16 and torch.equal(y, y32.to(torch.bfloat16))
    assert torch.equal(y[:, 0], x[:, 0])
    assert x_grad.dtype == torch.bfloat16 and torch.equal(x_grad, x32_grad.to(torch.bfloat16))
    assert param_grads.keys() == param32_grads.keys() and len(param_grads) == 3
    for name, grad in param_grads.items():
        assert grad.dtype == torch.float32 and torch.equal(grad, param32_grads[name]), name


@pytest.mark.parametrize("kind", ["dorefa", "pact", "lsq"])
def test_quantizers_round_in_float32_under_cpu_bf16_autocast(kind):
    """trainer.amp=bf16 on the CPU: bf16 has 8 bits of mantissa, so an 8-bit grid rounded in
    bf16 would lose levels. Every quantizer must compute in float32 under autocast and give
    exactly the float32 result (exact: the same float32 kernels run in both cases)."""
    from qdnn_cli.models import build_model
    from qdnn_cli.quant import QuantSpec, set_bit_mode
    from qdnn_cli.quant.calibrate import calibrate_quantizers, mark_calibrated

    x = (torch.rand(8, 4, 5, 5) * 1.2 - 0.1).to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = quantize_unit(x, 8)
    # a bf16 activation comes back in bf16 (what the next convolution casts it to anyway),
    # each value the float32 level rounded once: no level lost or merged
    exact = affine_reference(x.detach().float(), 8)
    assert y.dtype == torch.bfloat16 and torch.equal(y, exact.to(torch.bfloat16))
    assert torch.equal(torch.round(y.detach().float() * 255), torch.round(exact * 255))
    in_bf16 = torch.round(x.detach().clamp(0, 1) * 255) / 255  # the same formula rounded in bf16 loses levels
    assert not torch.equal(torch.round(in_bf16.float() * 255), torch.round(exact * 255))
    # its gradient: the float32 one, in x's dtype
    g = torch.randn(x.shape)
    y.backward(g.to(torch.bfloat16))
    x32 = x.detach().float().requires_grad_(True)
    quantize_unit(x32, 8).backward(g.to(torch.bfloat16).float())
    assert x.grad.dtype == torch.bfloat16 and torch.equal(x.grad.float(), x32.grad)
    torch.manual_seed(0)
    model = build_model("tiny", QuantSpec((8, 32), kind, kind), 4, 3, width=8).eval()
    batch = torch.randn(4, 3, 8, 8)
    calibrate_quantizers(model, batch, (8, 32))
    mark_calibrated(model)
    set_bit_mode(model, 8)
    conv, act = model.conv2, torch.rand(4, 8, 8, 8) * 1.2
    with torch.no_grad():
        plain_w = conv.weight_quant(conv.weight, conv.w_bits)
        plain_a = conv.act_quant(act, conv.a_bits)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto_w = conv.weight_quant(conv.weight, conv.w_bits)
            auto_a = conv.act_quant(act, conv.a_bits)
    assert auto_w.dtype == auto_a.dtype == torch.float32
    assert torch.equal(auto_w, plain_w) and torch.equal(auto_a, plain_a)
