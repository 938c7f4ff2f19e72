"""Per-layer mixed precision: configurations, their cost, eval --config and qdnn search."""
import json

import pytest
import torch

from conftest import tiny_overrides
from helpers import qdnn, read_csv
from qdnn_cli.cost import config_cost, layer_costs
from qdnn_cli.models import build_model
from qdnn_cli.quant import BitConfig, BitModeError, QuantSpec, bit_config, set_bit_config, set_bit_mode
from qdnn_cli.quant.mixed import LayerBits, quantized_layers

MODES = (2, 3, 4, 8, 32)


def _resnet():
    torch.manual_seed(0)
    return build_model("resnet20", QuantSpec(MODES), 10).eval()


def _state(net):
    """(w, a) of every quantized layer and the BN key of every Bit-Specific BN."""
    from qdnn_cli.quant import BitSpecificBN

    return ({n: (m.w_bits, m.a_bits) for n, m in quantized_layers(net).items()},
            {n: m._key for n, m in net.named_modules() if isinstance(m, BitSpecificBN)})


def test_a_configuration_changes_exactly_the_layers_it_names():
    net = _resnet()
    set_bit_config(net, {"default": "w4a4", "layers": {"layer2.0.conv1": "w2a8", "layer3.1.conv2": "w8a2"}})
    layers, bns = _state(net)
    assert layers.pop("layer2.0.conv1") == (2, 8) and layers.pop("layer3.1.conv2") == (8, 2)
    assert set(layers.values()) == {(4, 4)}
    # a BN takes the weight bits of the layer feeding it; the stem's BN the default's
    assert bns.pop("layer2.0.bn1") == "2" and bns.pop("layer3.1.bn2") == "8" and bns.pop("bn1") == "4"
    assert set(bns.values()) == {"4"}


@pytest.mark.parametrize("bits", MODES)
def test_uniform_configurations_reproduce_set_bit_mode_exactly(bits):
    net = _resnet()
    x = torch.randn(2, 3, 32, 32)
    set_bit_mode(net, bits)
    expected = net(x)
    set_bit_mode(net, 2 if bits != 2 else 3)
    with bit_config(net, BitConfig.uniform(bits)):
        got = net(x)
    assert torch.equal(got, expected)
    assert _state(net)[0]["layer1.0.conv1"] == ((2, 2) if bits != 2 else (3, 3))  # restored afterwards


def test_config_errors_name_the_problem():
    net = _resnet()
    with pytest.raises(BitModeError, match="unknown layer 'layer9.conv'"):
        set_bit_config(net, {"default": 4, "layers": {"layer9.conv": "w2a2"}})
    with pytest.raises(BitModeError, match=r"weight bit-widths \[5\] are not in this model's modes"):
        set_bit_config(net, {"default": "w5a4"})
    with pytest.raises(BitModeError, match="not a bit setting"):
        LayerBits.parse("w2b4")
    assert LayerBits.parse("fp") == LayerBits(32, 32) and LayerBits.parse(4).label == "4"


def test_cost_of_a_configuration_equals_a_hand_count():
    # tiny net, 8x8 input, width 8: conv1 (3->8, FP), conv2 (8->16, stride 2), conv3 (16->16), fc (16->10, FP)
    model_cfg = {"name": "tiny", "kwargs": {"width": 8}}
    layers, other = layer_costs(model_cfg, {}, 10, 3, 8)
    net = build_model("tiny", QuantSpec((32,)), 10, 3, width=8)
    convs = {n: m for n, m in net.named_modules() if hasattr(m, "w_bits")}
    assert [lc.name for lc in layers] == list(convs)
    macs = {lc.name: lc.macs for lc in layers}
    assert macs == {"conv1": 8 * 8 * 8 * 3 * 9, "conv2": 16 * 4 * 4 * 8 * 9, "conv3": 16 * 4 * 4 * 16 * 9, "fc": 16 * 10}
    cfg = BitConfig(LayerBits(4, 4), (("conv2", LayerBits(2, 8)),))
    cost = config_cost(layers, other, cfg)
    w = {n: m.weight.numel() for n, m in convs.items()}
    bops = macs["conv1"] * 32 * 32 + macs["conv2"] * 2 * 8 + macs["conv3"] * 4 * 4 + macs["fc"] * 32 * 32
    assert cost["bops"] == bops
    bits = w["conv1"] * 32 + w["conv2"] * 2 + w["conv3"] * 4 + w["fc"] * 32 + other * 32
    assert cost["size_mb"] == pytest.approx(bits / 8 / 1e6)
    assert {r["name"]: (r["w"], r["a"]) for r in cost["layers"]} == {"conv1": (32, 32), "conv2": (2, 8), "conv3": (4, 4),
                                                                      "fc": (32, 32)}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("mixed") / "run"
    r = qdnn("train", "quickstart", *tiny_overrides(run, "data.train_fraction=0.5", "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    return run


def test_eval_with_a_config_reports_accuracy_and_both_costs(trained_run, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("default: w4a4\nlayers:\n  conv2: w2a8\n")
    r = qdnn("eval", trained_run, "--config", cfg, "--calibrate-bn", "2", "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = {x["mode"]: x for x in read_csv(sorted(trained_run.glob("eval-*.csv"))[-1])}
    row = rows["config cfg.yaml"]
    assert row["calibrated"] == "True" and float(row["gbops"]) > 0 and float(row["size_mb"]) > 0
    assert float(rows["2"]["gbops"]) < float(row["gbops"]) < float(rows["32"]["gbops"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: 4\nlayers:\n  nope: w2a2\n")
    r = qdnn("eval", trained_run, "--config", bad, "--device", "cpu")
    assert r.exit_code == 2 and "unknown layer 'nope'" in r.output
    five = tmp_path / "five.yaml"
    five.write_text("default: w5a4\n")
    r = qdnn("eval", trained_run, "--config", five, "--device", "cpu")
    assert r.exit_code == 2 and "[5] were never trained" in r.output and "--calibrate-bn" in r.output


def _search(run, out, seed, budget="3-bit"):
    return qdnn("search", run, "--budget-bops", budget, "--candidates", "6", "--calibrate-bn", "1",
                "--search-images", "24", "--seed", str(seed), "--device", "cpu", "--out", out)


def test_search_respects_its_budget_and_repeats_with_a_seed(trained_run, tmp_path):
    a, b, c = (_search(trained_run, tmp_path / k, seed) for k, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert a.exit_code == 0, a.output
    rows = read_csv(tmp_path / "a" / "search.csv")
    budget = json.loads((tmp_path / "a" / "summary.json").read_text())["budget_value"]
    searched = [r for r in rows if not r["origin"].startswith("uniform")]
    assert len(searched) == 6 and all(float(r["gbops"]) * 1e9 <= budget * (1 + 1e-9) for r in searched)
    assert (tmp_path / "a" / "search.csv").read_text() == (tmp_path / "b" / "search.csv").read_text()
    assert read_csv(tmp_path / "c" / "search.csv") != rows  # another seed, another search
    best = BitConfig.load(tmp_path / "a" / "best.yaml")
    assert best in {BitConfig.from_dict(_config_dict(r["config"])) for r in searched}
    for name in ("pareto.csv", "pareto.png", "val.csv"):
        assert (tmp_path / "a" / name).exists()
    assert read_csv(tmp_path / "a" / "val.csv")[0]["setting"].startswith("searched")


def _config_dict(text):
    layers = dict(item.split("=") for item in text.split())
    return {"default": layers.pop("default"), "layers": layers}


def test_search_budget_below_the_cheapest_configuration_is_one_line(trained_run, tmp_path):
    r = _search(trained_run, tmp_path / "x", 0, budget="1K")
    assert r.exit_code == 2 and "below the cheapest configuration" in r.output
    assert not (tmp_path / "x").exists()


def test_mixed_sampling_trains_random_configurations_beside_the_uniform_modes(tmp_path, monkeypatch):
    from qdnn_cli.engine import step

    seen = []
    original = step.mode_losses

    def spy(model, x, y, modes, *a, **k):
        seen.append(list(modes))
        return original(model, x, y, modes, *a, **k)

    monkeypatch.setattr("qdnn_cli.engine.loop.mode_losses", spy)
    run = tmp_path / "run"
    r = qdnn("train", "quickstart", *tiny_overrides(run, "trainer.mode_sampling=mixed", "trainer.mixed_k=3",
                                                    "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    assert all(m[:5] == [32, 8, 4, 3, 2] and len(m) == 8 and all(isinstance(c, BitConfig) for c in m[5:])
               for m in seen)
    configs = [c for m in seen for c in m[5:]]
    assert len(set(configs)) == len(configs)  # fresh draws
    assert all(set(c.all_bits()) <= set(MODES) for c in configs)
    train = [x for x in read_csv(run / "metrics.csv") if x["split"] == "train"]
    assert [x["mode"] for x in train] == ["32", "8", "4", "3", "2", "mixed"]
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "c", "trainer.mode_sampling=mixed", "trainer.compile=true"))
    assert r.exit_code == 2 and "runs eager" in r.output


def test_report_adds_a_searched_configuration_as_a_row(trained_run, tmp_path):
    r = qdnn("search", trained_run, "--budget-bops", "3-bit", "--candidates", "4", "--calibrate-bn", "1",
             "--search-images", "24", "--device", "cpu")
    assert r.exit_code == 0, r.output
    (summary,) = trained_run.glob("search-bops-3-bit-*/summary.json")
    searched_top1 = json.loads(summary.read_text())["val"][0]["top1"]
    out = tmp_path / "t.csv"
    assert qdnn("report", trained_run, "--format", "csv", "--out", out, "--no-costs").exit_code == 0
    rows = {x["variant"]: x for x in read_csv(out)}
    row = rows["quantizable, searched per-layer bits (at the mode's BOPs)"]
    assert float(row["3-bit"]) == pytest.approx(searched_top1, abs=1e-4) and row["FP"] == ""


def test_search_by_size_and_budget_errors(trained_run, tmp_path):
    r = qdnn("search", trained_run, "--budget-size-mb", "4-bit", "--candidates", "4", "--calibrate-bn", "1",
             "--search-images", "24", "--device", "cpu", "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    rows = [x for x in read_csv(tmp_path / "s" / "search.csv") if not x["origin"].startswith("uniform")]
    assert all(float(x["size_mb"]) <= summary["budget_value"] + 1e-9 for x in rows)
    both = qdnn("search", trained_run, "--budget-size-mb", "1", "--budget-bops", "1G", "--device", "cpu")
    assert both.exit_code == 2 and "exactly one budget" in both.output
    bad = qdnn("search", trained_run, "--budget-bops", "lots", "--device", "cpu")
    assert bad.exit_code == 2 and "budget 'lots'" in bad.output


def test_a_budget_only_the_lowest_uniform_mode_fits_answers_with_that_mode(trained_run, tmp_path):
    # every layer already at the lowest trained bits: nothing else costs as little
    r = _search(trained_run, tmp_path / "low", 0, budget="2-bit")
    assert r.exit_code == 0, r.output
    assert "the best is the uniform 2 mode" in r.output
    assert BitConfig.load(tmp_path / "low" / "best.yaml") == BitConfig(LayerBits(2, 2), (("conv2", LayerBits(2, 2)),
                                                                                        ("conv3", LayerBits(2, 2))))


def test_rerank_scores_the_best_on_a_second_slice_and_picks_there(trained_run, tmp_path):
    r = qdnn("search", trained_run, "--budget-bops", "4-bit", "--candidates", "6", "--calibrate-bn", "1",
             "--search-images", "20", "--rerank", "3", "--seed", "0", "--strategy", "evolution", "--metric", "top1",
             "--device", "cpu", "--out", tmp_path / "r")
    assert r.exit_code == 0, r.output
    rows = read_csv(tmp_path / "r" / "search.csv")
    searched = [x for x in rows if not x["origin"].startswith("uniform") and x["rerank_top1"] != ""]
    in_budget_uniform = [x for x in rows if x["origin"].startswith("uniform") and x["within_budget"] == "True"]
    assert len(searched) == 3 and in_budget_uniform and all(x["rerank_top1"] != "" for x in in_budget_uniform)
    # the finalists are the three best on the search slice
    ranked = sorted((x for x in rows if not x["origin"].startswith("uniform")), key=lambda x: -float(x["top1"]))
    assert {x["id"] for x in searched} == {x["id"] for x in ranked[:3]} or \
        float(ranked[2]["top1"]) == float(ranked[3]["top1"])  # a tie at the cut
    winner = max(searched, key=lambda x: (float(x["rerank_top1"]), float(x["top1"])))
    assert BitConfig.load(tmp_path / "r" / "best.yaml") == BitConfig.from_dict(_config_dict(winner["config"]))
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["reranked"] == 3 + len(in_budget_uniform) and "re-ranked on" in summary["search_slice"]


def test_the_rerank_slice_shares_no_image_with_the_search_slice_or_the_training_subset():
    from omegaconf import OmegaConf

    from qdnn_cli.config import compose
    from qdnn_cli.data import build_holdout

    cfg = compose("quickstart", tiny_overrides("unused", "data.train_fraction=0.5"))
    calib, first, second, what = build_holdout(cfg.data, 0, 16, 16, torch.device("cpu"), 20, 20)
    rows = lambda b: {tuple(img.flatten().tolist()) for img in b.images}  # noqa: E731
    assert len(rows(first)) >= 19 and len(rows(second)) >= 19
    assert not rows(first) & rows(second)
    assert not (rows(first) | rows(second)) & rows(calib)
    assert OmegaConf.select(cfg, "data.train_fraction") == 0.5 and "re-ranked on" in what


# ----------------------------------------------------------------- sensitivity strategy
def _toy_space(budget_per_mac: float):
    """Three layers of 1, 2 and 4 MACs; BOPs = MACs x w x a."""
    from qdnn_cli.search import Space

    macs = {"a": 1, "b": 2, "c": 4}

    def cost(cfg):
        return {"bops": float(sum(m * cfg.bits_of(n).w * cfg.bits_of(n).a for n, m in macs.items())), "size_mb": 0.0}

    return Space(list(macs), [2, 3, 4, 8], [2, 3, 4, 8], cost, "bops", budget_per_mac * sum(macs.values()))


def _toy_damage(choice):
    """Separable: layer c hates low weight bits, layer a low activation bits, b is indifferent."""
    scale = {"a": (0.1, 3.0), "b": (0.2, 0.2), "c": (4.0, 0.1)}
    return sum(sw / w + sa / a for n, (w, a) in choice.items() for sw, sa in [scale[n]])


def test_sensitivity_table_and_knapsack_find_the_best_configuration_in_budget():
    import itertools

    from qdnn_cli.search import allocate, measure_sensitivity, sensitivity_trials

    space = _toy_space(9)  # uniform 3-bit's BOPs
    reference = space.uniform(3)
    table = measure_sensitivity(space, _toy_damage, reference)
    assert len(table) == sensitivity_trials(space, reference) > 0
    for r in table:  # a row changes one layer's weight or activation bits and reports the difference
        changed = {**reference, r["layer"]: (r["w"], r["a"])}
        assert r["delta_damage"] == pytest.approx(_toy_damage(changed) - _toy_damage(reference))
        assert (r["w"] == 3) != (r["a"] == 3) and (r["part"] == "weight") == (r["a"] == 3)
    choice = allocate(space, table, reference)
    assert space.cost(choice) <= space.budget
    # the damage here is separable, so the knapsack must find the true optimum: brute force agrees
    settings = [(w, a) for w in space.w_bits for a in space.a_bits]
    best = min((dict(zip(space.names, combo)) for combo in itertools.product(settings, repeat=3)
                if space.cost(dict(zip(space.names, combo))) <= space.budget), key=_toy_damage)
    assert _toy_damage(choice) == pytest.approx(_toy_damage(best))
    assert _toy_damage(choice) < _toy_damage(reference)
    assert choice["c"][0] > 3 and choice["a"][1] > choice["a"][0]  # bits went where they matter


def test_knapsack_keeps_to_a_budget_with_no_slack():
    from qdnn_cli.search import allocate, measure_sensitivity

    space = _toy_space(4)  # uniform 2-bit: nothing but the cheapest configuration fits
    reference = space.best_uniform([2, 3, 4, 8, 32])
    assert reference == space.cheapest()
    assert allocate(space, measure_sensitivity(space, _toy_damage, reference), reference) == space.cheapest()


# Float comparison, the KL of a distribution to itself is 0 up to float32 log rounding (1e-6)
@pytest.mark.numerics
def test_kl_to_full_precision_is_zero_for_full_precision_and_positive_below():
    from qdnn_cli.data.tensor_loader import TensorBatches
    from qdnn_cli.search import reference_logprobs, score_against

    torch.manual_seed(0)
    net = _resnet()
    images, labels = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (12,))
    loader = TensorBatches(images, labels, 5, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), shuffle=False)
    ref = reference_logprobs(net, loader, 32)
    fp, two = score_against(net, loader, 32, ref), score_against(net, loader, 2, ref)
    assert fp.kl == pytest.approx(0.0, abs=1e-6) and two.kl > 1e-4
    with torch.no_grad():
        set_bit_mode(net, 2)
        logits = torch.cat([net(x) for x, _ in loader])
    assert two.top1 == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())


def test_search_by_sensitivity_writes_its_table_and_picks_by_kl(trained_run, tmp_path):
    r = qdnn("search", trained_run, "--budget-bops", "3-bit", "--candidates", "4", "--calibrate-bn", "1",
             "--search-images", "20", "--rerank", "2", "--seed", "0", "--device", "cpu", "--out", tmp_path / "k")
    assert r.exit_code == 0, r.output
    assert "single-layer measurements" in r.output and "sensitivity: " in r.output  # progress lines off a terminal
    table = read_csv(tmp_path / "k" / "sensitivity.csv")
    assert {x["layer"] for x in table} == {"conv2", "conv3"} and {x["part"] for x in table} == {"weight", "act"}
    rows = read_csv(tmp_path / "k" / "search.csv")
    assert [x["origin"] for x in rows if not x["origin"].startswith("uniform")][0] == "sensitivity"
    finalists = [x for x in rows if not x["origin"].startswith("uniform") and x["rerank_kl"] != ""]
    winner = min(finalists, key=lambda x: float(x["rerank_kl"]))
    assert BitConfig.load(tmp_path / "k" / "best.yaml") == BitConfig.from_dict(_config_dict(winner["config"]))
    val = read_csv(tmp_path / "k" / "val.csv")
    fp_trained = next(x for x in val if x["setting"] == "uniform 32" and x["bn"] == "trained")
    assert float(fp_trained["kl"]) == pytest.approx(0.0, abs=1e-6)
    versus = json.loads((tmp_path / "k" / "summary.json").read_text())["versus_uniform_on_val"]
    three = next(x for x in val if x["setting"] == "uniform 3" and x["bn"] == "calibrated 1")
    assert versus["uniform"] == 3 and "McNemar p" in r.output
    assert versus["delta_top1"] == pytest.approx(float(val[0]["top1"]) - float(three["top1"]), abs=1e-3)
    bad = qdnn("search", trained_run, "--budget-bops", "3-bit", "--strategy", "greedy", "--device", "cpu")
    assert bad.exit_code == 2 and "--strategy 'greedy'" in bad.output and "Traceback" not in bad.output
    bad = qdnn("search", trained_run, "--budget-bops", "3-bit", "--metric", "loss", "--device", "cpu")
    assert bad.exit_code == 2 and "--metric 'loss'" in bad.output


# Float comparison, exact: the configuration and the mode run the same kernels
@pytest.mark.numerics
@pytest.mark.parametrize("bits", [3, 8, 32])
def test_a_uniform_search_choice_is_exactly_that_mode_stem_bn_included(bits):
    from qdnn_cli.search import Space

    net = _resnet()
    names = list(quantized_layers(net))
    space = Space(names, [2, 3, 4, 8, 32], [2, 3, 4, 8, 32], lambda c: {"bops": 0.0, "size_mb": 0.0}, "bops", 1.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        set_bit_mode(net, bits)
        expected_state, expected = _state(net), net(x)
        set_bit_config(net, space.config(space.uniform(bits)))
        assert _state(net) == expected_state
        assert torch.equal(net(x), expected)
        # a mixed choice: the default (the stem's BN) is what most layers run at
        choice = {**space.uniform(bits), names[0]: (2, 2)}
        assert space.config(choice).default == LayerBits(*space.uniform(bits)[names[1]])


def test_paired_comparison_counts_discordant_images_and_gives_the_exact_mcnemar_p():
    from qdnn_cli.search import paired_comparison

    a = torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([0, 0, 1, 0, 1], dtype=torch.bool)
    r = paired_comparison(a, b)
    assert (r["only_searched"], r["only_uniform"]) == (2, 1) and r["delta_top1"] == pytest.approx(20.0)
    assert r["p_value"] == pytest.approx(1.0)  # 2 * (1 + 3) / 8, capped at 1
    ten = paired_comparison(torch.ones(10, dtype=torch.bool), torch.zeros(10, dtype=torch.bool))
    assert ten["p_value"] == pytest.approx(2 / 1024) and ten["delta_top1"] == pytest.approx(100.0)
    assert paired_comparison(a, a)["p_value"] == 1.0
