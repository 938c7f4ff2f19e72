"""AMP / channels_last / compile / sandwich flags: accepted and working on CPU; CUDA-only parts skip."""
import pytest
import torch

from conftest import tiny_overrides
from helpers import qdnn, read_csv


def test_bf16_autocast_and_channels_last_train_on_cpu(tmp_path):
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", "trainer.amp=bf16", "trainer.channels_last=true",
                                                    "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    assert len(read_csv(tmp_path / "r" / "results.csv")) == 5


def test_fp16_needs_cuda_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: fp16 is allowed here")
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", "trainer.amp=fp16"))
    assert r.exit_code == 2 and "fp16 needs CUDA" in r.output


def test_sandwich_sampling_trains_extremes_every_step(tmp_path):
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", "trainer.mode_sampling=sandwich",
                                                    "trainer.epochs=1"))
    assert r.exit_code == 0, r.output
    train = {x["mode"]: x for x in read_csv(tmp_path / "r" / "metrics.csv") if x["split"] == "train"}
    # FP and 2-bit see every batch (96 images); one middle mode per step (3 steps of 32)
    assert int(train["32"]["images"]) == 96 and int(train["2"]["images"]) == 96
    assert sum(int(train[m]["images"]) for m in ("8", "4", "3") if m in train) == 96
    val = [x for x in read_csv(tmp_path / "r" / "metrics.csv") if x["split"] == "val"]
    assert {x["mode"] for x in val} == {"32", "8", "4", "3", "2"}  # every mode still evaluated


def test_compile_option_sets_a_recompile_budget_per_mode():
    import torch._dynamo as dynamo

    from qdnn_cli.engine.loop import compile_model
    from qdnn_cli.models import build_model
    from qdnn_cli.quant import QuantSpec

    net = build_model("tiny", QuantSpec((2, 3, 4, 8, 32)), 4, 3, width=8)
    compiled = compile_model(net, 5)
    limit = getattr(dynamo.config, "recompile_limit", None) or dynamo.config.cache_size_limit
    assert limit >= 2 * 5 + 2  # one graph per mode x train/eval
    if hasattr(dynamo.config, "fail_on_recompile_limit_hit"):
        assert dynamo.config.fail_on_recompile_limit_hit  # never a silent eager fallback
    assert compiled._orig_mod is net


@pytest.mark.slow
def test_compiled_training_runs_on_cpu(tmp_path):
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", "trainer.compile=true", "trainer.epochs=1"))
    assert r.exit_code == 0, r.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: AMP fp16 + channels_last on the GPU")
def test_cuda_fp16_channels_last(tmp_path):
    r = qdnn("train", "quickstart", "data=synthetic", "model=tiny", "trainer.epochs=1", "trainer.device=cuda",
             "trainer.amp=fp16", "trainer.channels_last=true", "trainer.progress=false", f"out_dir={tmp_path / 'r'}")
    assert r.exit_code == 0, r.output
