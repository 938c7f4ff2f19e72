import pytest
import torch
import torchvision

from qdnn_cli.engine.checkpoint import atomic_save, safe_load
from qdnn_cli.models import build_model, load_torchvision_weights
from qdnn_cli.quant import (
    BitModeError, BitSpecificBN, QConv2d, QuantSpec, bit_mode, current_bit_mode, load_quantizable_state_dict,
    quantizable_state_dict, set_bit_mode,
)


# Float comparisons here: exact where the same operations run on both sides (a quantizable model at full
# precision is a plain one); torchvision against ours to 1e-5 (other modules, same maths).
pytestmark = pytest.mark.numerics

MODES = (2, 3, 4, 8, 32)


def small_resnet(modes=MODES, **kw):
    torch.manual_seed(0)
    return build_model("resnet20", QuantSpec(modes, **kw), num_classes=10)


# Standard parameter counts (10 classes; BN shared so it counts once):
# He et al.'s CIFAR ResNets with option-A shortcuts and the 3×3-stem CIFAR ResNet-18.
@pytest.mark.parametrize("name,count", [
    ("resnet20", 269_722), ("resnet32", 464_154), ("resnet56", 853_018), ("cifar_resnet18", 11_173_962),
])
def test_cifar_parameter_counts(name, count):
    net = build_model(name, QuantSpec((2, 32), bit_specific_bn=False), num_classes=10)
    assert sum(p.numel() for p in net.parameters()) == count


def test_preact_width_multiplier_scales_convs():
    one = build_model("preact_resnet20", QuantSpec((32,), bit_specific_bn=False), num_classes=10)
    five = build_model("preact_resnet20x5", QuantSpec((32,), bit_specific_bn=False), num_classes=10)
    convs = lambda n: sum(m.weight.numel() for m in n.modules() if isinstance(m, QConv2d) and m.in_channels > 3)
    assert convs(five) == 25 * convs(one)
    assert sum(p.numel() for p in one.parameters()) == 272_282  # ResNet-20 + two 1x1 projection shortcuts


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_models_match_torchvision_layout_and_count(name):
    ours = build_model(name, QuantSpec((2, 32), bit_specific_bn=False), num_classes=1000)
    tv = getattr(torchvision.models, name)()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters())
    names = {k.replace(".bn.shared", "") for k in ours.state_dict()}
    assert set(tv.state_dict()) <= names


def test_bsbn_grows_with_modes_but_shared_weights_do_not():
    a = build_model("resnet20", QuantSpec((2, 32)), num_classes=10)
    b = build_model("resnet20", QuantSpec((2, 3, 4, 8, 32)), num_classes=10)
    bn_a = sum(p.numel() for m in a.modules() if isinstance(m, BitSpecificBN) for p in m.parameters())
    bn_b = sum(p.numel() for m in b.modules() if isinstance(m, BitSpecificBN) for p in m.parameters())
    assert bn_b == bn_a * 5 // 2
    other = lambda n: sum(p.numel() for name, p in n.named_parameters() if ".bn." not in name)
    assert other(a) == other(b)


def test_shared_bn_option_has_one_bn_per_layer():
    net = small_resnet(bit_specific_bn=False)
    bns = [m for m in net.modules() if isinstance(m, BitSpecificBN)]
    assert bns and all(list(m.bn.keys()) == ["shared"] for m in bns)
    net_bs = small_resnet()
    assert all(list(m.bn.keys()) == ["2", "3", "4", "8", "32"] for m in net_bs.modules() if isinstance(m, BitSpecificBN))


def test_modes_differ_with_the_same_weight_tensors():
    net = small_resnet().eval()
    x = torch.randn(4, 3, 32, 32)
    ptrs = {n: p.data_ptr() for n, p in net.named_parameters() if "conv" in n}
    outs = {}
    for m in MODES:
        set_bit_mode(net, m)
        outs[m] = net(x)
        assert {n: p.data_ptr() for n, p in net.named_parameters() if "conv" in n} == ptrs
    for a in MODES:
        for b in MODES:
            if a < b:
                assert not torch.allclose(outs[a], outs[b]), (a, b)


def test_mode_32_is_exactly_the_full_precision_network():
    quantizable = small_resnet().eval()
    plain = build_model("resnet20", QuantSpec((32,)), num_classes=10).eval()
    # copy shared weights and the 32-bit BN of the quantizable net into the FP-only net
    # (whose BNs are keyed ".bn.32." too: its only mode is 32)
    state = {k: v for k, v in quantizable.state_dict().items() if ".bn." not in k or ".bn.32." in k}
    state = {k: v for k, v in state.items() if "_quant." not in k}
    plain.load_state_dict(state)
    x = torch.randn(3, 3, 32, 32)
    set_bit_mode(quantizable, 32)
    assert torch.equal(quantizable(x), plain(x))
    # and one QConv2d in mode 32 is exactly F.conv2d
    conv = quantizable.layer1[0].conv1
    y = torch.randn(2, 16, 8, 8)
    assert torch.equal(conv(y), torch.nn.functional.conv2d(y, conv.weight, None, 1, 1))


def test_training_step_in_mode_2_changes_only_mode_2_bn_statistics():
    net = small_resnet().train()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running_mean" in k}
    set_bit_mode(net, 2)
    net(torch.randn(8, 3, 32, 32)).sum().backward()
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".bn.2." in k for k in changed)
    assert all(k in changed for k in before if ".bn.2." in k)


def test_switch_errors_and_context_manager():
    net = small_resnet(modes=(4, 32))
    with pytest.raises(BitModeError, match=r"bit mode 2 is not one of this model's modes \[4, 32\]"):
        set_bit_mode(net, 2)
    set_bit_mode(net, 32)
    with bit_mode(net, 4):
        assert current_bit_mode(net) == 4
        assert all((m.w_bits, m.a_bits) == (4, 4) for m in net.modules() if isinstance(m, QConv2d))
        assert all(m.mode == 4 for m in net.modules() if isinstance(m, BitSpecificBN))
    assert current_bit_mode(net) == 32
    assert all((m.w_bits, m.a_bits) == (32, 32) for m in net.modules() if isinstance(m, QConv2d))


def test_first_conv_and_classifier_full_precision_by_default():
    net = small_resnet()
    assert not net.conv1.quantize and not net.fc.quantize
    assert build_model("resnet20", QuantSpec(MODES, quantize_first_last=True), 10).conv1.quantize


@pytest.mark.parametrize("quant", [dict(), dict(act="pact"), dict(weight="lsq", act="lsq")])
def test_checkpoint_round_trip_reproduces_every_mode(tmp_path, quant):
    net = small_resnet(**quant)
    net.train()
    for m in MODES:  # move BN statistics and initialise LSQ steps
        set_bit_mode(net, m)
        net(torch.randn(8, 3, 32, 32))
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    expected = {m: net(x) for m in MODES if set_bit_mode(net, m) is not None}
    atomic_save({"model": quantizable_state_dict(net)}, tmp_path / "ck.pt")
    fresh = build_model("resnet20", QuantSpec(MODES, **{k: v for k, v in quant.items()}), 10).eval()
    load_quantizable_state_dict(fresh, safe_load(tmp_path / "ck.pt")["model"])
    for m in MODES:
        set_bit_mode(fresh, m)
        assert torch.equal(fresh(x), expected[m]), m


def test_loading_into_other_modes_names_both_sides():
    state = quantizable_state_dict(small_resnet(modes=(2, 4, 32)))
    other = small_resnet(modes=(3, 8, 32))
    with pytest.raises(BitModeError, match=r"saved for bit modes \[2, 4, 32\] but the model has bit modes \[3, 8, 32\]"):
        load_quantizable_state_dict(other, state)
    shared = small_resnet(modes=(2, 4, 32), bit_specific_bn=False)
    with pytest.raises(BitModeError, match="shared BN"):
        load_quantizable_state_dict(shared, state)


def test_start_from_torchvision_resnet18_weights():
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = build_model("resnet18", QuantSpec((2, 4, 32)), num_classes=1000).eval()
    load_torchvision_weights(ours, tv.state_dict())
    x = torch.randn(2, 3, 64, 64)
    set_bit_mode(ours, 32)
    assert torch.allclose(ours(x), tv(x), atol=1e-5)
    assert torch.equal(ours.layer2[0].downsample[1].bn["2"].running_var, tv.layer2[0].downsample[1].running_var)
