"""AMP / channels_last / compile / sandwich flags: accepted and working on CPU; CUDA-only parts skip."""
import os

import pytest
import torch

from conftest import inductor_builds, tiny_overrides
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


def test_pinned_cpu_kernels_compile_into_a_cache_folder_of_their_own(monkeypatch, tmp_path):
    """A graph compiled under ATEN_CPU_CAPABILITY=avx2 and loaded by a native run crashed it
    (torch's cache does not key on the capability): a pinned process moves off inductor's
    default folder; a native one and a folder the user chose stay where they are."""
    import torch._inductor.runtime.cache_dir_utils as cache_dirs

    from qdnn_cli.engine.compile import compile_model
    from qdnn_cli.models import build_model
    from qdnn_cli.quant import QuantSpec

    def default_cache_dir():  # inductor's default, moved under tmp_path: nothing lands in the real one
        return str(tmp_path / "torchinductor")

    monkeypatch.setattr(cache_dirs, "default_cache_dir", default_cache_dir)
    net = build_model("tiny", QuantSpec((2, 32)), 4, 3, width=8)
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    compile_model(net, 2)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default_cache_dir()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    compile_model(net, 2)
    pinned = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert pinned == default_cache_dir() + "_ATEN_CPU_CAPABILITY-avx2_ONEDNN_MAX_CPU_ISA-AVX2"
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    compile_model(net, 2)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] not in (pinned, default_cache_dir())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compile_model(net, 2)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_compile_option_sets_a_recompile_budget_per_mode():
    import torch._dynamo as dynamo

    from qdnn_cli.engine.compile import compile_model
    from qdnn_cli.models import build_model
    from qdnn_cli.quant import QuantSpec

    net = build_model("tiny", QuantSpec((2, 3, 4, 8, 32)), 4, 3, width=8)
    compiled = compile_model(net, 5)
    limit = getattr(dynamo.config, "recompile_limit", None) or dynamo.config.cache_size_limit
    assert limit >= 2 * 5 + 2  # one graph per mode x train/eval
    if hasattr(dynamo.config, "fail_on_recompile_limit_hit"):
        assert dynamo.config.fail_on_recompile_limit_hit  # never a silent eager fallback
    assert compiled._orig_mod is net


@inductor_builds
def test_compiled_training_runs_on_cpu(tmp_path):
    # default suite: the only CPU test of a compiled (compile_scope=mode) training run
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", "trainer.compile=true", "trainer.epochs=1"))
    assert r.exit_code == 0, r.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: AMP fp16 + channels_last on the GPU")
def test_cuda_fp16_channels_last(tmp_path):
    r = qdnn("train", "quickstart", "data=synthetic", "model=tiny", "trainer.epochs=1", "trainer.device=cuda",
             "trainer.amp=fp16", "trainer.channels_last=true", "trainer.progress=false", f"out_dir={tmp_path / 'r'}")
    assert r.exit_code == 0, r.output


def test_compiled_whole_step_equals_eager_per_mode_backward():
    """compile_scope=step: one graph for all modes' forwards and losses gives the eager
    per-mode step's gradients, BN statistics of every mode and per-mode statistics."""
    import copy
    from qdnn_cli.engine.compile import compile_step, whole_step
    from qdnn_cli.engine.step import EpochStats, mode_losses
    from qdnn_cli.engine.losses import QuantizableLoss
    from qdnn_cli.models import build_model
    from qdnn_cli.quant import QuantSpec

    torch.manual_seed(0)
    modes = (32, 8, 4, 3, 2)
    eager = build_model("tiny", QuantSpec(modes), 10, 3, width=8).train()
    compiled = copy.deepcopy(eager)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    loss_fn = QuantizableLoss()
    stats = EpochStats()
    _, eager_stats = mode_losses(eager, x, y, list(modes), loss_fn, True, backward=torch.Tensor.backward)
    for m, (ce, top1, top5) in eager_stats.items():
        stats.add(m, ce, top1, top5, 16)
    step = compile_step(whole_step(compiled, loss_fn, True), 1)
    total, per_mode = step(x, y, modes)
    total.backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            # the message keeps torch's own (how many elements, how far): a rounding flip in a
            # quantizer reads differently from a wrong graph
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    for (name, a), b in zip(eager.named_buffers(), compiled.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")  # every mode's BN updated
    for m in modes:
        torch.testing.assert_close(per_mode[m][0] * 16, stats.loss[m], rtol=1e-5, atol=1e-5)
        assert int(per_mode[m][1]) == int(stats.correct[m]) and int(per_mode[m][2]) == int(stats.correct5[m])


@pytest.mark.slow
def test_compiled_whole_step_trains_with_sandwich_sampling(tmp_path):
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", "trainer.compile=true", "trainer.compile_scope=step",
                                                    "trainer.mode_sampling=sandwich", "trainer.epochs=2"))
    assert r.exit_code == 0, r.output
    assert len(read_csv(tmp_path / "r" / "results.csv")) == 5


@pytest.mark.parametrize("override, message", [
    ("trainer.compile_scope=batch", "trainer.compile_scope='batch' is not allowed"),
    ("trainer.compile=fast", "trainer.compile='fast' is not allowed"),
])
def test_compile_settings_are_validated(tmp_path, override, message):
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", override))
    assert r.exit_code == 2 and message in r.output
    assert not (tmp_path / "r").exists()  # rejected before a run directory is made


def test_mode_losses_never_asks_a_compiled_forward_for_its_truth_value():
    """A torch.compile'd module answers bool() through len(), which a network does not
    have: the step must test the forward it was given against None, not for truth."""
    from qdnn_cli.engine.losses import QuantizableLoss
    from qdnn_cli.engine.step import mode_losses
    from qdnn_cli.models import build_model
    from qdnn_cli.quant import QuantSpec

    class LikeCompiled:  # what torch's OptimizedModule does for a module without len()
        def __init__(self, module):
            self.module, self.calls = module, 0

        def __call__(self, x):
            self.calls += 1
            return self.module(x)

        def __len__(self):
            raise TypeError(f"{type(self.module).__name__} does not support len()")

    torch.manual_seed(0)
    net = build_model("tiny", QuantSpec((2, 32)), 4, 3, width=8).train()
    forward = LikeCompiled(net)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    total, per_mode = mode_losses(net, x, y, [32, 2], QuantizableLoss(), True, forward)
    assert forward.calls == 2 and set(per_mode) == {32, 2} and torch.isfinite(total)
