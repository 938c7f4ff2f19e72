"""qdnn export: integer ONNX models per mode, the switchable package, parity, sizes, bad input."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from helpers import qdnn, read_csv

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from qdnn_cli.export import ExportError, ExportOptions, export_checkpoint  # noqa: E402
from qdnn_cli.export.graph import GraphBuilder  # noqa: E402
from qdnn_cli.export.integer import NoIntegerForm, bit_pack, bit_unpack, weight_integer_form  # noqa: E402
from qdnn_cli.export.lower import lower_model  # noqa: E402
from qdnn_cli.export.package import mode_model  # noqa: E402
from qdnn_cli.loaded_run import load_checkpoint_model  # noqa: E402
from qdnn_cli.models import build_model  # noqa: E402
from qdnn_cli.quant import QConv2d, QLinear, QuantSpec, set_bit_mode  # noqa: E402

MODES = ["2", "4", "8", "32"]
LABELS = {"2": "2bit", "4": "4bit", "8": "8bit", "32": "fp"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny quantizable run (modes 2/4/8/FP), trained for two epochs."""
    out = tmp_path_factory.mktemp("export") / "run"
    r = qdnn("train", "quickstart", *tiny_overrides(out, "quant.bits=[2,4,8,32]"))
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def exported(trained):
    out = trained.parent / "deploy"
    r = qdnn("export", trained, "--out", out)
    assert r.exit_code == 0, r.output
    return out


def _session(path, optimized=None):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# Float comparison, float32 bound: ONNX Runtime's integer sums are exact, PyTorch's float convolutions are not;
# 1e-4 of the logits' scale holds on any kernel while no rounding level flips (checked on 24 inputs, the argmax
# must agree)
@pytest.mark.numerics
def test_every_mode_predicts_as_qdnn_does(trained, exported):
    rows = {r["mode"]: r for r in read_csv(exported / "export.csv")}
    assert set(rows) == set(LABELS.values())
    run = load_checkpoint_model(trained / "checkpoint.pt", set())
    x = torch.randn(24, 3, 8, 8)
    for mode, label in LABELS.items():
        r = rows[label]
        assert abs(float(r["top1_onnx"]) - float(r["top1_qdnn"])) <= 0.1
        set_bit_mode(run.model, int(mode))
        with torch.no_grad():
            ours = run.model(x).numpy()
        theirs = _session(exported / f"{label}.onnx").run(None, {"images": x.numpy()})[0]
        assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(ours).max()), label
        assert (ours.argmax(1) == theirs.argmax(1)).all(), label


def test_quantized_modes_run_integer_convolutions_after_optimisation(exported, tmp_path):
    for label in LABELS.values():
        optimized = tmp_path / f"{label}.opt.onnx"
        _session(exported / f"{label}.onnx", optimized)
        graph = onnx.load(optimized).graph
        ops = [n.op_type for n in graph.node]
        float_convs = sum(op in ("Conv", "FusedConv") for op in ops)  # FusedConv: a Conv with its ReLU
        if label == "fp":
            assert "ConvInteger" not in ops and float_convs == 3
        else:
            # the tiny net: conv1 (full precision: the first layer) and conv2, conv3 quantized;
            # DoReFa's odd codes take a second, one-channel ConvInteger per layer (window sums)
            assert ops.count("ConvInteger") == 4, ops
            assert float_convs == 1, ops
            # the weights reach the kernel as constants: their decoding was folded at load
            constants = {i.name for i in graph.initializer}
            assert all(n.input[1] in constants for n in graph.node if n.op_type == "ConvInteger")


def test_sizes_equal_a_hand_count(exported):
    rows = {r["mode"]: r for r in read_csv(exported / "export.csv")}
    conv2, conv3 = 8 * 16 * 9, 16 * 16 * 9  # width 8: conv2 8->16, conv3 16->16, 3x3
    for bits, label in ((2, "2bit"), (4, "4bit"), (8, "8bit")):
        assert int(rows[label]["integer_codes"]) == conv2 + conv3
        assert int(rows[label]["packed_weight_bytes"]) == math.ceil(conv2 * bits / 8) + math.ceil(conv3 * bits / 8)
    assert int(rows["fp"]["packed_weight_bytes"]) == 0
    # in the .onnx files: codes of up to 4 bits two per byte, 8-bit ones a byte each
    for label, per_code in (("2bit", 0.5), ("4bit", 0.5), ("8bit", 1)):
        stored = [i for i in onnx.load(exported / f"{label}.onnx").graph.initializer if ".weight_" in i.name
                  and i.data_type in (onnx.TensorProto.UINT4, onnx.TensorProto.INT8, onnx.TensorProto.UINT8)]
        assert sorted(len(i.raw_data) for i in stored) == [math.ceil(conv2 * per_code), math.ceil(conv3 * per_code)]
    summary = json.loads((exported / "export.json").read_text())
    assert summary["package"]["bytes"] == (exported / "switchable.npz").stat().st_size


def test_the_package_rebuilds_every_mode_exactly(exported):
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    for label in LABELS.values():
        alone = onnx.load(exported / f"{label}.onnx")
        rebuilt = mode_model(exported / "switchable.npz", label)
        a = {i.name: onnx.numpy_helper.to_array(i) for i in alone.graph.initializer}
        b = {i.name: onnx.numpy_helper.to_array(i) for i in rebuilt.graph.initializer}
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), (label, k)
        y1 = _session(exported / f"{label}.onnx").run(None, {"images": x})[0]
        y2 = ort.InferenceSession(rebuilt.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
        assert np.array_equal(y1, y2)


@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_packing_round_trips(bits):
    values = np.random.default_rng(bits).integers(0, 2**bits, 1001).astype(np.uint8)
    data = bit_pack(values, bits)
    assert len(data) == math.ceil(1001 * bits / 8)
    assert np.array_equal(bit_unpack(data, bits, 1001), values)


@pytest.mark.parametrize("name,weight,act,first_last", [
    ("resnet20", "dorefa", "pact", False),
    ("preact_resnet20", "lsq", "lsq", False),
    ("cifar_resnet18", "dorefa", "dorefa", True),
    ("tiny", "dorefa", "dorefa", True),
])
def test_each_architecture_and_quantizer_lowers_to_the_same_function(name, weight, act, first_last):
    torch.manual_seed(0)
    spec = QuantSpec((2, 8, 32), weight, act, weight_scale="mean_abs" if weight == "dorefa" else "none",
                     quantize_first_last=first_last, quantize_shortcut=name == "preact_resnet20")
    model = build_model(name, spec, 10, 3)
    x = torch.randn(6, 3, 16, 16)
    model.train()
    for mode in spec.modes:  # BN statistics and LSQ steps from data
        set_bit_mode(model, mode)
        with torch.no_grad():
            model(x)
    model.eval()
    for mode in spec.modes:
        set_bit_mode(model, mode)
        graph = GraphBuilder("m")
        logits, lowering = lower_model(model, graph, "images")
        session = ort.InferenceSession(graph.model("images", (3, 16, 16), logits, 10, "").SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        with torch.no_grad():
            ours = model(x).numpy()
        theirs = session.run(None, {"images": x.numpy()})[0]
        # exact up to float summation order (a rounding level may flip now and then)
        assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 5 / 6, (name, mode)
        assert np.abs(ours - theirs).mean() <= 0.05 * np.abs(ours).mean() + 1e-6, (name, mode)
        if mode != 32:
            assert lowering.int_layers > 0
            if first_last:  # float: conv1 (weight-only: its input is the image) and unquantized shortcuts
                plain = sum(not m.quantize for m in model.modules() if isinstance(m, (QConv2d, QLinear)))
                assert lowering.float_layers == plain + 1


def test_a_quantizer_without_integer_form_is_named():
    class Odd(torch.nn.Module):
        def forward(self, w, bits):
            return w

    with pytest.raises(NoIntegerForm, match="layer1.conv: weight quantizer Odd has no integer form"):
        weight_integer_form(Odd(), torch.randn(4, 4), 4, "layer1.conv")


def test_untrained_mode_needs_calibration_and_leaves_nothing(trained, tmp_path):
    out = tmp_path / "deploy"
    r = qdnn("export", trained, "--modes", "3,32", "--out", out)
    assert r.exit_code == 2
    assert "never trained" in r.output and "--calibrate-bn" in r.output and "Traceback" not in r.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
    r = qdnn("export", trained, "--modes", "3,32", "--calibrate-bn", "2", "--out", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("*.onnx")) == ["3bit.onnx", "fp.onnx"]


def test_a_mixed_configuration_exports_beside_the_modes(trained, tmp_path):
    cfg = tmp_path / "mixed.yaml"
    cfg.write_text("default: w4a4\nlayers:\n  conv2: w2a8\n")
    out = tmp_path / "deploy"
    r = qdnn("export", trained, "--modes", "4", "--config", cfg, "--out", out)
    assert r.exit_code == 0, r.output
    rows = {r["mode"]: r for r in read_csv(out / "export.csv")}
    assert set(rows) == {"4bit", "config"}
    assert abs(float(rows["config"]["top1_onnx"]) - float(rows["config"]["top1_qdnn"])) <= 0.1
    assert int(rows["config"]["packed_weight_bytes"]) == math.ceil(8 * 16 * 9 * 2 / 8) + math.ceil(16 * 16 * 9 * 4 / 8)


def test_a_failed_parity_check_names_the_mode_and_writes_nothing(trained, tmp_path):
    out = tmp_path / "deploy"
    with pytest.raises(ExportError, match=r"^mode fp: the ONNX model does not compute what qdnn computes"):
        export_checkpoint(trained / "checkpoint.pt", out, ExportOptions(max_logit_error=-1.0), say=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_kept_without_force(trained, exported):
    before = sorted(p.name for p in exported.iterdir())
    r = qdnn("export", trained, "--out", exported)
    assert r.exit_code == 2 and "--force" in r.output
    assert sorted(p.name for p in exported.iterdir()) == before


def test_a_missing_extra_is_one_line(trained, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    r = qdnn("export", trained, "--out", tmp_path / "deploy")
    assert r.exit_code == 2
    assert "pip install 'qdnn[export]'" in r.output and len(r.output.strip().splitlines()) <= 2
    assert not (tmp_path / "deploy").exists()


def test_bench_export_writes_latency_per_mode(trained, tmp_path):
    out = tmp_path / "deploy"
    assert qdnn("export", trained, "--modes", "2,32", "--out", out).exit_code == 0
    r = qdnn("bench-export", out, "--repeats", "2", "--threads", "1")
    assert r.exit_code == 0, r.output
    rows = {r["mode"]: r for r in read_csv(out / "export.csv")}
    for row in rows.values():
        assert float(row["latency_b1_ms"]) > 0 and float(row["latency_b32_ms"]) > 0
        assert row["bench_threads"] == "1"
    assert float(rows["fp"]["latency_b1_vs_fp"]) == 1.0
    assert "top1_onnx" in rows["2bit"]  # the parity columns stay
    bad = qdnn("bench-export", tmp_path)
    assert bad.exit_code == 2 and "not a qdnn export" in bad.output


def test_the_report_adds_size_on_disk_and_latency_rows(trained):
    r = qdnn("export", trained, "--modes", "2,32", "--bench")  # default folder: RUN/export
    assert r.exit_code == 0, r.output
    rows = {r["mode"]: r for r in read_csv(trained / "export" / "export.csv")}
    r = qdnn("report", trained)
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if "exported, bit-packed weights (KB)" in x)
    assert f"{int(rows['2bit']['packed_total_bytes']) / 1000:.3f}" in line
    assert "ONNX Runtime CPU latency, batch 32 (ms)" in r.output
    shutil.rmtree(trained / "export")
    assert "exported" not in qdnn("report", trained).output


# ----------------------------------------------------------------------------- the QDQ form and parity
@pytest.fixture(scope="module")
def exported_qdq(trained):
    out = trained.parent / "deploy_qdq"
    r = qdnn("export", trained, "--format", "qdq", "--modes", "2,4,32", "--out", out)
    assert r.exit_code == 0, r.output
    return out


def _tampered(path, out, how):
    """``path``'s model with one weight channel damaged: its scale doubled, or its codes'
    sign flipped (levels p -> top - p)."""
    from onnx import numpy_helper

    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    if how == "scale":
        name = next(n for n in inits if n.endswith(("weight_scale", "out_scale")) and "conv2" in n)
        arr = numpy_helper.to_array(inits[name]).copy()
        arr.reshape(-1)[0] *= 2
    else:
        name = next(n for n in inits if "conv2" in n and "weight_level" in n)
        arr = numpy_helper.to_array(inits[name]).astype(np.int32)
        top = arr.max()
        arr[0] = top - arr[0]
        arr = arr.astype(numpy_helper.to_array(inits[name]).dtype)
    inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    onnx.save(model, out)
    return out


@pytest.mark.parametrize("form", ["integer", "qdq"])
def test_parity_passes_a_correct_export_and_fails_one_wrong_scale_or_sign(trained, exported, exported_qdq, form,
                                                                           tmp_path):
    from qdnn_cli.export.command import _parity_row, parity_failure

    folder = exported if form == "integer" else exported_qdq
    run = load_checkpoint_model(trained / "checkpoint.pt", set())
    set_bit_mode(run.model, 4)
    x = torch.randn(64, 3, 8, 8)
    labels = np.zeros(64, np.int64)
    with torch.no_grad():
        ours = run.model(x).numpy()

    def verdict(path):
        theirs = _session(path).run(None, {"images": x.numpy()})[0]
        row = _parity_row("4bit", ours, theirs, labels, type("L", (), {"int_layers": 0, "float_layers": 0}), path)
        return parity_failure(row, len(labels), ExportOptions())
    assert verdict(folder / "4bit.onnx") is None
    for how in ("scale", "sign"):
        assert verdict(_tampered(folder / "4bit.onnx", tmp_path / f"{how}.onnx", how)) is not None, how


@pytest.mark.parametrize("residual", ["float", "int8"])
def test_the_qdq_form_runs_quantized_convolutions_as_integer_kernels(trained, exported_qdq, residual, tmp_path):
    """ONNX Runtime's optimised graph: a QLinearConv for every quantized convolution whose
    output is quantized again (the tiny net's conv2); conv3, which feeds the float head,
    too with --residual int8; no other float Conv but the full-precision first one."""
    folder = exported_qdq
    if residual == "int8":
        folder = tmp_path / "int8"
        r = qdnn("export", trained, "--format", "qdq", "--residual", "int8", "--modes", "2,4,32", "--out", folder)
        assert r.exit_code == 0, r.output
    for label in ("2bit", "4bit"):
        optimized = tmp_path / f"{label}.opt.onnx"
        _session(folder / f"{label}.onnx", optimized)
        ops = [n.op_type for n in onnx.load(optimized).graph.node]
        fused = 2 if residual == "int8" else 1
        assert ops.count("QLinearConv") == fused, ops
        assert ops.count("Conv") + ops.count("FusedConv") == 3 - fused, ops
    summary = json.loads((folder / "export.json").read_text())
    assert summary["format"] == "qdq" and summary["residual"] == residual
    rows = {r["mode"]: r for r in read_csv(folder / "export.csv")}
    assert float(rows["4bit"]["argmax_agreement"]) >= 0.97


def test_a_negative_bn_scale_is_exported_by_flipping_the_codes(trained, tmp_path):
    """A BN with negative γ in front of the QDQ weights: codes flipped, scale kept positive,
    and the ONNX model still computes what qdnn does."""
    run = load_checkpoint_model(trained / "checkpoint.pt", set())
    model = run.model
    set_bit_mode(model, 4)
    with torch.no_grad():
        bn = model.bn2.bn["4"]
        bn.weight[:3] = -bn.weight[:3].abs() - 0.5
    graph = GraphBuilder("neg", "qdq")
    logits, _ = lower_model(model.eval(), graph, "images")
    path = tmp_path / "neg.onnx"
    onnx.save(graph.model("images", (3, 8, 8), logits, 4, "test"), path)
    x = torch.randn(32, 3, 8, 8)
    with torch.no_grad():
        ours = model(x).numpy()
    theirs = _session(path).run(None, {"images": x.numpy()})[0]
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.95
    assert np.median(np.abs(ours - theirs).max(1) / (ours.max(1) - ours.min(1))) <= 0.02
    signs = [i for i in onnx.load(path).graph.initializer if i.name.endswith("code_sign") and i.name.startswith("conv2")]
    assert signs
    multipliers = onnx.numpy_helper.to_array(signs[0]).reshape(-1)  # sign × the codes' power-of-two factor
    assert (multipliers[:3] < 0).all() and (multipliers[3:] > 0).all()


def test_a_misspelt_format_and_a_mode_without_a_qdq_form_are_one_line(trained, tmp_path):
    r = qdnn("export", trained, "--format", "qdqq", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "--format" in r.output and not (tmp_path / "a").exists()
    r = qdnn("export", trained, "--format", "qdq", "--out", tmp_path / "b")  # 8-bit DoReFa codes: ±255
    assert r.exit_code == 2 and "mode 8bit has no QDQ form" in r.output and not (tmp_path / "b").exists()


@pytest.mark.parametrize("which", ["integer", "qdq"])
def test_a_switchable_session_gives_each_mode_what_its_file_gives(exported, exported_qdq, which):
    """One session per mode from switchable.npz: exact, the same model bytes in the same runtime."""
    from qdnn_cli.export.switchable import SwitchableSession, switch_cost

    folder = exported if which == "integer" else exported_qdq
    net = SwitchableSession(folder, threads=1)
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    for mode in net.modes:
        expected = _session(folder / f"{mode}.onnx").run(None, {"images": x})[0]
        assert np.array_equal(net.run(x, mode=mode), expected), mode
    cost = switch_cost(net, x, rounds=2)
    assert set(cost) == set(net.modes) and all(v["after_switch_ms"] > 0 and v["warm_ms"] > 0 for v in cost.values())
    with pytest.raises(ExportError, match="no mode"):
        net.run(x, mode="5bit")


@pytest.mark.parametrize("form", ["integer", "qdq"])
def test_openvino_runs_both_forms_as_qdnn_does(trained, exported, exported_qdq, form):
    """The second runtime: OpenVINO reads the same files; its predictions and logits agree
    with qdnn's as ONNX Runtime's do (the export's own parity check ran it too)."""
    pytest.importorskip("openvino")
    from qdnn_cli.export import runtimes
    from qdnn_cli.export.command import _parity_row, parity_failure

    folder = exported if form == "integer" else exported_qdq
    rows = {r["mode"]: r for r in read_csv(folder / "export.csv")}
    assert all(float(r["openvino_argmax_agreement"]) >= 0.97 for r in rows.values())
    # against the reference that rounds what the export rounds (the QDQ form's bias and 8-bit
    # head input): what the export's own check measured
    assert all(float(r["openvino_median_logit_error"]) <= 1e-3 for r in rows.values())
    if form == "qdq":
        return
    run = load_checkpoint_model(trained / "checkpoint.pt", set())
    x = torch.randn(32, 3, 8, 8)
    for mode, label in (("2", "2bit"), ("32", "fp")):
        set_bit_mode(run.model, int(mode))
        with torch.no_grad():
            ours = run.model(x).numpy()
        theirs = runtimes.load("openvino", folder / f"{label}.onnx", 1)(x.numpy())
        row = _parity_row(label, ours, theirs, np.zeros(32, np.int64),
                          type("L", (), {"int_layers": 0, "float_layers": 0}), folder / f"{label}.onnx")
        assert parity_failure(row, 32, ExportOptions()) is None, (label, row["median_logit_error"])


def test_bench_export_in_openvino_and_a_runtime_that_is_not_installed(exported, monkeypatch):
    pytest.importorskip("openvino")
    r = qdnn("bench-export", exported, "--runtime", "openvino", "--repeats", "1", "--threads", "1")
    assert r.exit_code == 0, r.output
    rows = {x["mode"]: x for x in read_csv(exported / "export.csv")}
    assert float(rows["4bit"]["openvino_latency_b32_ms"]) > 0 and float(rows["fp"]["openvino_latency_b32_vs_fp"]) == 1.0
    r = qdnn("bench-export", exported, "--runtime", "tensorrt")
    assert r.exit_code == 2 and "--runtime" in r.output
    from qdnn_cli.export import runtimes

    monkeypatch.setattr(runtimes, "installed", lambda name: name != "openvino")
    r = qdnn("bench-export", exported, "--runtime", "openvino")
    assert r.exit_code == 2 and "pip install 'qdnn[openvino]'" in r.output


@pytest.mark.numerics
def test_int8_residual_keeps_a_resnet_in_integer_kernels_and_the_reference_exact(tmp_path):
    """--residual int8 on a CIFAR ResNet-20: every quantized convolution a QLinearConv and
    every residual sum a QLinearAdd in ONNX Runtime's optimised graph (the streams between
    blocks in uint8, the option-A shortcut slicing the codes), no float Add left; the
    reference that simulates those roundings agrees with the runtime; the FP mode keeps its
    streams float."""
    from qdnn_cli.export.lower import output_ranges, simulated_qdq

    torch.manual_seed(0)
    spec = QuantSpec((2, 4, 32), "dorefa", "dorefa", weight_scale="mean_abs")
    model = build_model("resnet20", spec, 10, 3)
    x = torch.randn(16, 3, 16, 16)
    model.train()
    for mode in spec.modes:
        set_bit_mode(model, mode)
        with torch.no_grad():
            model(x)
    model.eval()
    for mode in (4, 32):
        set_bit_mode(model, mode)
        graph = GraphBuilder("m", "qdq")
        logits, lowering = lower_model(model, graph, "images", output_ranges(model, [x]))
        path, optimized = tmp_path / f"{mode}.onnx", tmp_path / f"{mode}.opt.onnx"
        onnx.save(graph.model("images", (3, 16, 16), logits, 10, ""), path)
        ops = [n.op_type for n in onnx.load(path).graph.node]
        if mode == 32:
            assert not lowering.streams and "QuantizeLinear" not in ops
            continue
        assert len(lowering.streams) == 10  # the stem and nine blocks
        session = _session(path, optimized)
        fused = [n.op_type for n in onnx.load(optimized).graph.node]
        assert fused.count("QLinearConv") == 18 and fused.count("QLinearAdd") == 9, fused
        assert "Add" not in fused and fused.count("Conv") + fused.count("FusedConv") == 1, fused
        with torch.no_grad(), simulated_qdq(lowering):
            ours = model(x).numpy()
        theirs = session.run(None, {"images": x.numpy()})[0]
        # float32 bound: the reference rounds what the runtime rounds; a level that flips on a
        # float-order difference moves a logit by one step of a fine 8-bit grid
        assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 15 / 16
        assert np.median(np.abs(ours - theirs).max(1) / (ours.max(1) - ours.min(1))) <= 1e-3


def test_a_stop_signal_mid_export_leaves_nothing_half_written(trained, tmp_path):
    """SIGTERM while the modes are being checked: the partial folder is removed, the
    destination never appears, and the process's own handler comes back."""
    import os
    import signal

    from qdnn_cli.startup import StopRequested

    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "deploy"
    with pytest.raises(StopRequested):  # the first mode's line is said after its parity check
        export_checkpoint(trained / "checkpoint.pt", out, ExportOptions(modes=[4, 32]),
                          say=lambda line: os.kill(os.getpid(), signal.SIGTERM))
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before
