"""bench.py --tiny: the benchmark's own code path on tiny shapes, on the CPU, in seconds."""

import json
from pathlib import Path

import pytest
import torch

import bench


@pytest.fixture
def one_thread():
    """One intra-op thread: on a CPU shared with other jobs, two threads can be many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_bench_writes_json_and_table(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)  # --device auto resolves to the CPU
    assert bench.main(["--tiny", "--device", "auto", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "benchmarks.json").read_text())
    assert {"device", "torch", "diffusers", "train", "generate"} <= result.keys()
    assert result["device"] == "cpu" and result["shape"] == "tiny"
    assert set(bench.TRAIN_CASES) <= result["train"].keys() and set(bench.GENERATE_CASES) <= result["generate"].keys()
    for what in ("train", "generate"):
        for case, r in result[what].items():
            assert r["s_per_image"] > 0 and r["peak_gib"] is None, (what, case)
            assert r["dtype"] == "torch.float32", (what, case)  # the CPU runs fp32 whatever mixed_precision says
    # The original schedule: batch 1 (accumulated over the epoch of 5); the project: the whole epoch at once.
    assert result["train"]["original"]["micro_batch_size"] == 1 and result["train"]["disco"]["micro_batch_size"] == 5
    assert result["generate"]["original"]["batch_size"] == 1 and result["generate"]["disco"]["batch_size"] == 10
    table = (tmp_path / "benchmarks.md").read_text()
    assert "Token gradient, float16 vs fp32" in table and ": pass (needs" in table
    assert "| train | original | 1 |" in table and "| generate | disco | 10 |" in table

    # The numerics check runs fp16 on the CPU too (through the GradScaler, halving after an overflow).
    # Measured on these shapes: cosine 0.9999994, norm ratio 1.0018, relative difference 0.0021 at loss
    # scale 32768; the control (fp32, another noise) has cosine -0.26, so a gradient of the wrong image,
    # or a scale left in it, fails by far.
    g = result["gradient_precision"]
    assert g["dtype"] == "torch.float16" and g["ok"] and g["fp32_norm"] > 0
    assert g["cosine"] > 0.999 and abs(g["norm_ratio"] - 1) < 0.02 and g["rel_diff"] < 0.02
    assert 1 <= g["loss_scale"] <= 2**16
    assert g["control_cosine"] < 0.5 and g["cosine"] - g["control_cosine"] > 0.5


def test_auto_device_resolves_to_the_cpu_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    (tmp_path / "sd").mkdir()
    cfg = bench.make_cfg(bench.SHAPES["tiny"], tmp_path / "sd", "auto")
    assert cfg.device == "auto" and cfg.mixed_precision == "fp16"
    assert bench.device_dtype(cfg) == (torch.device("cpu"), torch.float32)


def test_default_output_is_never_docs():
    docs = Path(bench.__file__).parent / "docs"
    for tiny in (False, True):
        out = bench.default_out(tiny)
        assert out.resolve() != docs.resolve() and docs.resolve() not in out.resolve().parents
    assert bench.default_out(True).name == "bench_tiny" and bench.default_out(False).name == "bench"


def test_sd14_shapes_refuse_a_cpu_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.main(["--out", str(tmp_path)]) == 2
    assert not (tmp_path / "benchmarks.json").exists()
