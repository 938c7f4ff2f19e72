"""Training modes with separate weight and activation bits (``quant.bits=[w2a4, 4, 32]``)."""
import pytest
import torch

from conftest import tiny_overrides
from helpers import qdnn, read_csv
from qdnn_cli.models import build_model
from qdnn_cli.quant import BitModeError, BitSpecificBN, QuantSpec, parse_mode, set_bit_config, set_bit_mode, sort_modes
from qdnn_cli.quant.mixed import quantized_layers
from qdnn_cli.quant.modes import mode_from_label, mode_code, mode_from_code, mode_label


# Float comparisons here: exact: a wXaY mode and the setting it stands for run the same kernels.
pytestmark = pytest.mark.numerics


def test_modes_parse_order_and_round_trip_through_checkpoint_codes():
    assert [parse_mode(v) for v in (4, "4", "w4a4", "fp", "32", "W2A4", "w8a32")] == [4, 4, 4, 32, 32, "w2a4", "w8a32"]
    # cost order (bits per MAC, then weight bits): uniform modes keep their numeric order
    assert sort_modes([32, "w4a8", 2, "w2a4", 4, "w4a2", 8, 3]) == [2, "w2a4", "w4a2", 3, 4, "w4a8", 8, 32]
    for m in (1, 2, 8, 32, "w2a4", "w8a32", "w32a8"):
        assert mode_from_code(mode_code(m)) == m
    assert [mode_from_code(c) for c in (2, 3, 4, 8, 32)] == [2, 3, 4, 8, 32]  # codes written before wXaY
    assert [mode_label(m) for m in (32, 4, "w2a4")] == ["FP", "4-bit", "w2a4"]
    assert [mode_from_label(x) for x in ("FP", "4-bit", "w2a4", "32")] == [32, 4, "w2a4", 32]
    for bad in ("w2a9", "w0a4", 0, 5.5, "four", True):
        with pytest.raises(BitModeError, match="is not a bit mode"):
            parse_mode(bad)


def _net(modes):
    torch.manual_seed(0)
    return build_model("resnet20", QuantSpec(modes), 10).eval()


def _bn_keys(net):
    return {n: m._key for n, m in net.named_modules() if isinstance(m, BitSpecificBN)}


def test_a_wa_mode_switches_every_layer_and_selects_its_own_bn():
    net = _net((2, "w2a4", 4, 32))
    assert net.bit_modes == (2, "w2a4", 4, 32)
    assert set(dict(net.named_modules())["layer1.0.bn1"].bn) == {"2", "w2a4", "4", "32"}
    x = torch.randn(3, 3, 32, 32)
    logits = {}
    for m in (2, "w2a4", 4):
        set_bit_mode(net, m)
        logits[m] = net(x)
        assert {wa for wa in ((q.w_bits, q.a_bits) for q in quantized_layers(net).values())} == {
            (2, 4) if m == "w2a4" else (m, m)}
        assert set(_bn_keys(net).values()) == {str(m)}
    assert not torch.equal(logits["w2a4"], logits[2]) and not torch.equal(logits["w2a4"], logits[4])
    set_bit_config(net, {"default": "w2a4"})  # the uniform configuration is the mode, exactly
    assert torch.equal(net(x), logits["w2a4"])
    with pytest.raises(BitModeError, match="'w4a8' is not one of this model's modes"):
        set_bit_mode(net, "w4a8")


def test_a_mixed_configuration_picks_each_bn_by_its_feeding_layers_bits():
    net = _net((2, "w2a4", 4, 32))
    set_bit_config(net, {"default": 4, "layers": {"layer1.0.conv1": "w2a4", "layer1.0.conv2": "w2a2",
                                                  "layer1.1.conv1": "w4a2"}})
    keys = _bn_keys(net)
    # (2,4): its own trained mode; (2,2): uniform 2; (4,2): no such mode, so uniform 4
    assert (keys["layer1.0.bn1"], keys["layer1.0.bn2"], keys["layer1.1.bn1"]) == ("w2a4", "2", "4")
    assert keys["layer1.1.bn2"] == "4" and keys["bn1"] == "4"  # the default's, and the stem's BN
    # no uniform mode of the weight bits: the mode with those weight bits and the nearest activation bits
    net = _net(("w2a4", "w2a8", "w4a2", 32))
    set_bit_config(net, {"default": "w4a2", "layers": {"layer2.0.conv1": "w2a2"}})
    assert _bn_keys(net)["layer2.0.bn1"] == "w2a4"
    with pytest.raises(BitModeError, match=r"activation bit-widths \[3\] are not in this model's modes"):
        set_bit_config(net, {"default": "w2a3"})


def test_training_evaluating_searching_and_reporting_a_model_with_wa_modes(tmp_path):
    run = tmp_path / "run"
    r = qdnn("train", "quickstart", *tiny_overrides(run, "quant.bits=[w2a4,4,32]", "loss.target=next",
                                                    "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    assert [x["mode"] for x in read_csv(run / "results.csv")] == ["32", "4", "w2a4"]
    train = [x["mode"] for x in read_csv(run / "metrics.csv") if x["split"] == "train"]
    assert train == ["32", "4", "w2a4"]
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    assert state["_qdnn.bit_modes"].tolist() == [204, 4, 32]
    assert any(".bn.w2a4." in k for k in state)

    r = qdnn("eval", run, "--bits", "w2a4,4", "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = {x["mode"]: x for x in read_csv(sorted(run.glob("eval-*.csv"))[-1])}
    assert set(rows) == {"w2a4", "4"} and rows["w2a4"]["trained"] == "True"
    assert float(rows["w2a4"]["gbops"]) < float(rows["4"]["gbops"])
    r = qdnn("eval", run, "--bits", "w2a8", "--device", "cpu")  # 8-bit activations were never trained
    assert r.exit_code == 2 and "['w2a8'] were never trained" in r.output

    r = qdnn("search", run, "--budget-bops", "8-bit", "--candidates", "4", "--calibrate-bn", "1",
             "--search-images", "24", "--seed", "0", "--device", "cpu", "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    tried = [x for x in read_csv(tmp_path / "s" / "search.csv") if not x["origin"].startswith("uniform")]
    labels = {v for x in tried for v in (kv.split("=")[1] for kv in x["config"].split())}
    # only weight bits {2, 4, 32} and activation bits {4, 32} of the trained modes
    assert labels and all(parse_mode(v) in (4, 32, "w2a4", "w2a32", "w4a32", "w32a4") for v in labels)

    out = tmp_path / "t.csv"
    assert qdnn("report", run, "--format", "csv", "--out", out).exit_code == 0
    (row,) = [x for x in read_csv(out) if x["variant"] == "quantizable"]
    assert float(row["w2a4"]) == pytest.approx(float(read_csv(run / "results.csv")[2]["top1"]), abs=1e-4)
    (cost,) = [x for x in read_csv(out) if x["variant"] == "BOPs (G)"]
    assert float(cost["w2a4"]) < float(cost["4-bit"]) < float(cost["FP"])

    dedicated = tmp_path / "ded"
    r = qdnn("train", "quickstart", *tiny_overrides(dedicated, "trainer.kind=dedicated", "quant.bits=[w2a4]",
                                                    "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    assert [x["mode"] for x in read_csv(dedicated / "results.csv")] == ["w2a4"]


def test_a_wrong_mode_in_quant_bits_is_one_line(tmp_path):
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "bad", "quant.bits=[w2a9,32]"))
    assert r.exit_code == 2 and "quant.bits contains 'w2a9'" in r.output
    assert not (tmp_path / "bad").exists()
