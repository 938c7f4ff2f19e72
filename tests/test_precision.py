"""trainer.amp=auto: bf16 autocast where the CPU multiplies bf16 natively, float32 elsewhere;
the run records the precision that ran and refuses to resume in another one."""
import torch
import yaml

from conftest import tiny_overrides
from helpers import qdnn
from qdnn_cli.engine.device import native_cpu_bf16, resolve_amp

CPUINFO_SPR = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
CPUINFO_ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    monkeypatch.delenv("QDNN_CPU_BF16", raising=False)
    cpu = torch.device("cpu")
    assert native_cpu_bf16(CPUINFO_SPR) == "AMX-BF16, AVX-512 BF16"
    assert native_cpu_bf16(CPUINFO_ZEN3) is None
    assert resolve_amp("auto", cpu, CPUINFO_SPR)[0] == "bf16"
    assert resolve_amp("auto", cpu, CPUINFO_ZEN3)[0] == "none"
    assert resolve_amp("auto", torch.device("cuda"), CPUINFO_SPR)[0] == "none"
    # an explicit choice is never second-guessed
    assert resolve_amp("none", cpu, CPUINFO_SPR)[0] == "none" and resolve_amp("bf16", cpu, CPUINFO_ZEN3)[0] == "bf16"
    monkeypatch.setenv("QDNN_CPU_BF16", "1")
    assert resolve_amp("auto", cpu)[0] == "bf16"
    monkeypatch.setenv("QDNN_CPU_BF16", "0")
    assert resolve_amp("auto", cpu)[0] == "none"


def _recorded_amp(run):
    return yaml.safe_load((run / "config.yaml").read_text())["trainer"]["amp"]


def test_a_run_records_the_precision_auto_chose_and_resumes_only_in_it(tmp_path, monkeypatch):
    run = tmp_path / "r"
    monkeypatch.setenv("QDNN_CPU_BF16", "1")  # as on a CPU with native bf16
    r = qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=2", "trainer.stop_after=1"))
    assert r.exit_code == 0, r.output
    assert _recorded_amp(run) == "bf16" and "precision: bf16 autocast (trainer.amp=auto" in r.output
    # the same command on a CPU without native bf16 would switch precision mid-run: refused
    monkeypatch.setenv("QDNN_CPU_BF16", "0")
    r = qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=2"))
    assert r.exit_code == 2 and "trainer.amp='bf16'" in r.output and "trainer.amp='none'" in r.output, r.output
    assert [line for line in r.output.splitlines() if line.startswith("error:")] == \
        [line for line in r.output.splitlines() if "trainer.amp=" in line]
    assert "pass trainer.amp=bf16 to continue it" in r.output
    # naming the precision that ran continues it, on any CPU
    r = qdnn("train", "quickstart", *tiny_overrides(run, "trainer.epochs=2", "trainer.amp=bf16"))
    assert r.exit_code == 0, r.output
    assert "resumed from" in r.output and _recorded_amp(run) == "bf16"


def test_qdnn_config_says_what_auto_means_on_this_machine(monkeypatch):
    monkeypatch.setenv("QDNN_CPU_BF16", "0")
    r = qdnn("config", "quickstart", "trainer.device=cpu")
    assert r.exit_code == 0 and "amp: auto" in r.output
    assert "# trainer.amp resolves to none on this machine (trainer.amp=auto: this CPU has no native bf16" in r.output
    monkeypatch.setenv("QDNN_CPU_BF16", "1")
    assert "# trainer.amp resolves to bf16 on this machine" in qdnn("config", "quickstart", "trainer.device=cpu").output
    assert "resolves to" not in qdnn("config", "quickstart", "trainer.amp=none").output
