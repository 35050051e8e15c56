"""bench.py --tiny: the benchmark's own code path on tiny shapes, on the CPU, in seconds."""

import json

import bench


def test_tiny_bench_writes_json_and_table(tmp_path):
    assert bench.main(["--tiny", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "benchmarks.json").read_text())
    assert {"device", "torch", "diffusers", "train", "generate"} <= result.keys()
    assert result["device"] == "cpu" and result["shape"] == "tiny"
    assert set(bench.TRAIN_CASES) <= result["train"].keys() and set(bench.GENERATE_CASES) <= result["generate"].keys()
    for what in ("train", "generate"):
        for case, r in result[what].items():
            assert r["s_per_image"] > 0 and r["peak_gib"] is None, (what, case)
    # The original schedule: batch 1 (accumulated over the epoch of 5); the project: the whole epoch at once.
    assert result["train"]["original"]["micro_batch_size"] == 1 and result["train"]["disco"]["micro_batch_size"] == 5
    assert result["generate"]["original"]["batch_size"] == 1 and result["generate"]["disco"]["batch_size"] == 10
    g = result["gradient_precision"]  # fp16 on the CPU too: the scaler path runs
    assert g["dtype"] == "torch.float16" and -1 <= g["cosine"] <= 1 and g["fp32_norm"] > 0 and g["norm_ratio"] > 0
    table = (tmp_path / "benchmarks.md").read_text()
    assert "Token gradient, float16 vs fp32" in table
    assert "| train | original | 1 |" in table and "| generate | disco | 10 |" in table


def test_sd14_shapes_refuse_a_cpu_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.main(["--out", str(tmp_path)]) == 2
    assert not (tmp_path / "benchmarks.json").exists()
