"""`make bench` runs end to end (shrunk: batch 8, one repeat, no CUDA section)."""
import json
import math

import pytest

from qdnn_cli.bench import steps as bench


def test_bench_prints_and_writes_every_cpu_ratio(tmp_path, capsys):
    out = tmp_path / "bench.json"
    ratios = bench.main(["--batch", "8", "--repeats", "1", "--e2e-images", "256", "--no-cuda", "--json", str(out),
                         "--pack-sizes", "1,2", "--pack-batch", "4"])
    for key in ("quant_overhead", "joint_ratio", "speedup_vs_naive", "joint_time_vs_contiguous",
                "cpu_train_images_per_s", "cpu_data_time_share", "cpu_mode_batch_ratio", "cpu_pack_ratio_1",
                "cpu_pack_ratio_2", "cpu_pack_ratio_vs_mode_batch_2", "cpu_pack_tflops_2",
                "matmul_tflops_float32", "matmul_tflops_bf16", "cpu_step_roofline_share_fp32_per_mode"):
        assert math.isfinite(ratios[key]) and ratios[key] > 0, key
    assert 0 <= ratios["cpu_data_time_share"] < 1
    assert json.loads(out.read_text()) == ratios
    printed = capsys.readouterr().out
    assert "quant_overhead = " in printed and "(target <= 1.15" in printed and "data_time_share = " in printed
    assert "cpu_mode_batch_ratio = " in printed and "N=2 " in printed and "TFLOP/s" in printed
    # the precision section says which bf16 this CPU has, and times bf16 only where it is native
    from qdnn_cli.engine.device import native_cpu_bf16 as native_bf16

    assert ("native bf16 (" in printed) == (native_bf16() is not None)
    assert ("bf16_step_speedup" in ratios) == (native_bf16() is not None)


@pytest.mark.slow
def test_bench_times_the_compiled_joint_step_on_cpu(capsys):
    ratios = bench.main(["--model", "tiny", "--batch", "4", "--repeats", "1", "--e2e-images", "0", "--no-cuda",
                         "--cpu-compiled"])
    for key in ("joint_compiled_vs_eager", "speedup_vs_naive_compiled"):
        assert math.isfinite(ratios[key]) and ratios[key] > 0, key
    assert "compiled the whole joint step for the CPU" in capsys.readouterr().out


def test_concurrent_bench_reports_aggregate_throughput_of_parallel_runs():
    from qdnn_cli.bench import concurrent as bench_concurrent

    results = bench_concurrent.main(["--runs", "1,2", "--images", "64", "--epochs", "1", "--train-args",
                                     "model=tiny model.kwargs.width=8 quant.bits=[2,32]"])
    assert [r["runs"] for r in results] == [1, 2]
    assert len(results[1]["per_run_images_per_s"]) == 2 and all(x > 0 for x in results[1]["per_run_images_per_s"])
    assert results[1]["aggregate_images_per_s"] == sum(results[1]["per_run_images_per_s"])
    assert results[0]["speedup_vs_one_run"] == 1.0
