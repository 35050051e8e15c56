"""bench.py --tiny: the benchmark's own code path on tiny shapes, on the CPU, in seconds."""

import json
from pathlib import Path

import pytest
import torch

from tools import bench


@pytest.fixture
def one_thread():
    """One intra-op thread: on a CPU shared with other jobs, two threads can be many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_bench_writes_json_and_table(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)  # --device auto resolves to the CPU
    args = ["--tiny", "--device", "auto", "--repeats", "1", "--warmup", "0", "--families", "none"]
    assert bench.main([*args, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "benchmarks.json").read_text())
    assert {"device", "torch", "diffusers", "train", "generate"} <= result.keys() and "families" not in result
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

    # Class batching: 1, 2, 4, 8 runs of 5 images in one epoch step, with and without checkpointing,
    # and the original's micro-batches of 1; on the CPU one forward holds them all (at most 64).
    cb = result["class_batch"]
    assert set(cb) == set(bench.CLASS_BATCH_CASES) and len(cb) == 1 + 2 * len(bench.CLASS_BATCH_RUNS)
    for case, r in cb.items():
        runs = bench.CLASS_BATCH_CASES[case][0]
        assert r["runs"] == runs and r["combined_batch"] == 5 * runs, case
        assert r["s_per_image"] > 0 and r["images"] == 5 * runs and r["peak_gib"] is None, case
        assert r["dtype"] == "torch.float32", case
    assert cb["original"]["micro_batch_size"] == 1 and cb["runs8"]["micro_batch_size"] == 40
    assert cb["runs2"]["gradient_checkpointing"] and not cb["runs2_no_ckpt"]["gradient_checkpointing"]
    pr = result["projection"]
    assert pr["classes"] == 1000 and pr["epochs_per_class"] == 50 and pr["images"] == 1000 * 50 * 5
    for key in ("original", "one_class_at_a_time", "class_batching"):
        c = pr[key]
        assert c["hours"] > 0 and c["hours"] == pytest.approx(pr["images"] * cb[c["case"]]["s_per_image"] / 3600)
    assert pr["one_class_at_a_time"]["case"] in ("runs1", "runs1_no_ckpt")
    assert pr["class_batching"]["s_per_image"] == min(r["s_per_image"] for c, r in cb.items() if c != "original")
    assert pr["speedup_vs_one_class"] >= 1
    assert "| runs8 | 8 | 40 | 40 | True |" in table and "Projected training cost of 1000 classes" in table

    # The numerics check runs fp16 on the CPU too (through the GradScaler, halving after an overflow), the
    # classifier in fp32 as in training. Measured on these shapes: cosine 0.999996, norm ratio 0.9966,
    # relative difference 0.0044 at loss scale 65536; the control (fp32, another noise) has cosine 0.44 and
    # an fp16 gradient for another prompt 0.88, so a gradient of the wrong image or prompt, or a scale left
    # in it, fails.
    g = result["gradient_precision"]
    assert g["dtype"] == "torch.float16" and g["ok"] and g["fp32_norm"] > 0
    assert g["cosine"] > 0.999 and abs(g["norm_ratio"] - 1) < 0.02 and g["rel_diff"] < 0.02
    assert 1 <= g["loss_scale"] <= 2**16
    assert g["control_cosine"] < 0.5 and g["cosine"] - g["control_cosine"] > 0.5


FAMILY_ARGS = ["--tiny", "--families_only", "--device", "auto", "--repeats", "1", "--warmup", "0"]


def test_tiny_families_write_every_case(tmp_path, monkeypatch, one_thread):
    """bench.py's SDXL, SDXL-Turbo, FLUX.1-schnell and -dev cases on model_zoo's tiny models (16 and 32 px for
    the GPU's 512 and 1024), with and without checkpointing, at batch 1 and 4; each case's time extrapolated
    from its gradient part and one no-grad step, the first also timed over all its steps."""
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.main([*FAMILY_ARGS, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "benchmarks.json").read_text())
    assert "train" not in result and result["family_run"]["command"] == result["command"]
    assert result["command"].startswith("python bench.py --tiny --families_only")
    families = result["families"]
    assert list(families) == list(bench.FAMILY_BENCH) == ["sdxl-turbo", "flux-schnell", "sdxl", "flux-dev"]
    steps = {"sdxl": 30, "sdxl-turbo": 1, "flux-schnell": 4, "flux-dev": 30}  # config.FAMILY_PRESETS' training steps
    names = {name for name, *_ in bench.family_cases("tiny")}
    assert len(names) == 8 and {"16px_batch1", "32px_batch4_no_ckpt"} <= names
    for variant, f in families.items():
        assert f["steps"] == steps[variant] and f["dtype"] == "torch.float32", variant  # the CPU runs fp32
        assert f["pipeline"] == ("FluxPipeline" if "flux" in variant else "StableDiffusionXLPipeline")
        assert all(m["parameters"] > 0 and m["dtype"] == "torch.float32" for m in f["models"].values()), variant
        assert set(f["cases"]) == names, variant
        for name, r in f["cases"].items():
            assert r["s_per_image"] > 0 and r["peak_gib"] is None and not r["oom"], (variant, name)
            assert r["s_per_class"] == pytest.approx(250 * r["s_per_image"])  # 50 epochs x 5 images at most
            assert r["gradient_checkpointing"] == (not name.endswith("_no_ckpt")) and r["steps"] == steps[variant]
            earlier = r["steps"] - r["grad_steps"]  # the no-grad steps before the gradient step
            assert (r["nograd_step_s"] is None) == (earlier == 0) and r["grad_part_s"] > 0
            expected = (r["grad_part_s"] + earlier * (r["nograd_step_s"] or 0)) / r["batch"]
            assert r["s_per_image"] == pytest.approx(expected), (variant, name)
        assert f["cases"]["16px_batch1"]["measured_s_per_image"] > 0  # the extrapolation's check
    table = (tmp_path / "benchmarks.md").read_text()
    assert "| flux-dev | 32px_batch4_no_ckpt | 30 | float32 | False |" in table and "| what | case |" not in table
    assert "16px_batch1 over all 30 steps:" in table


def test_family_out_of_memory_is_recorded(tmp_path, monkeypatch, one_thread):
    """A case that runs out of GPU memory is a result ("oom"), and the next cases still run; models that do not
    fit at all make every case of their variant out of memory."""
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    train, load = bench.bench_train, bench.load_family

    def tight_train(sd, clf, cfg, *args, **kw):
        if cfg.epoch_size == 4 and not cfg.gradient_checkpointing:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return train(sd, clf, cfg, *args, **kw)

    def tight_load(variant, *args):
        if variant == "flux-schnell":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return load(variant, *args)

    monkeypatch.setattr(bench, "bench_train", tight_train)
    monkeypatch.setattr(bench, "load_family", tight_load)
    assert bench.main([*FAMILY_ARGS, "--families", "sdxl-turbo,flux-schnell", "--out", str(tmp_path)]) == 0
    families = json.loads((tmp_path / "benchmarks.json").read_text())["families"]
    for name, r in families["sdxl-turbo"]["cases"].items():
        oom = name.endswith("batch4_no_ckpt")
        assert r["oom"] == oom and (r["s_per_image"] is None) == oom, name
    assert len(families["flux-schnell"]["cases"]) == 8 and "models" not in families["flux-schnell"]
    assert all(r["oom"] and r["s_per_image"] is None for r in families["flux-schnell"]["cases"].values())
    table = (tmp_path / "benchmarks.md").read_text()
    assert "| sdxl-turbo | 32px_batch4_no_ckpt | 1 | float32 | False | out of memory |" in table
    assert "| flux-schnell | 16px_batch1 | 4 | float32 | True | out of memory |" in table


def test_family_cases_past_the_budget_are_skipped(tmp_path, monkeypatch):
    """--budget_s: no family case starts after it (nothing is built); each is recorded as skipped."""
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.main([*FAMILY_ARGS, "--budget_s", "0", "--out", str(tmp_path)]) == 0
    families = json.loads((tmp_path / "benchmarks.json").read_text())["families"]
    assert list(families) == list(bench.FAMILY_BENCH)
    for f in families.values():
        assert "models" not in f and len(f["cases"]) == 8
        assert all(r["skipped"] == "time budget" for r in f["cases"].values())


def test_families_only_adds_to_the_earlier_results(tmp_path, monkeypatch):
    """--families_only keeps the SD 1.4 rows already in --out (a run at other shapes is replaced)."""
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    row = dict(s_per_image=1.0, peak_gib=None, dtype="torch.float32", micro_batch_size=1, batch_size=1)
    earlier = dict(device="cpu", torch="x", diffusers="y", shape="tiny", repeats=3, warmup=1, command="python bench.py")
    (tmp_path / "benchmarks.json").write_text(json.dumps(earlier | dict(train={"original": row})))
    assert bench.main([*FAMILY_ARGS, "--families", "sdxl", "--budget_s", "0", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "benchmarks.json").read_text())
    assert result["train"] == {"original": row} and result["command"] == "python bench.py"
    assert list(result["families"]) == ["sdxl"] and result["family_run"]["command"].endswith(
        "--budget_s 0 --out " + str(tmp_path)
    )
    table = (tmp_path / "benchmarks.md").read_text()
    assert "| train | original | 1 |" in table and "| sdxl | 16px_batch1 | 30 | float32 | True | skipped" in table

    (tmp_path / "benchmarks.json").write_text(json.dumps(earlier | dict(shape="sd14", train={"original": row})))
    assert bench.main([*FAMILY_ARGS, "--families", "sdxl", "--budget_s", "0", "--out", str(tmp_path)]) == 0
    assert "train" not in json.loads((tmp_path / "benchmarks.json").read_text())


def test_family_choice_is_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.main(["--tiny", "--families", "sdxl,sd4", "--out", str(tmp_path)]) == 2
    assert bench.main(["--device", "cpu", "--families", "flux-schnell", "--out", str(tmp_path)]) == 2  # 44 GB
    assert not (tmp_path / "benchmarks.json").exists()


def test_auto_device_resolves_to_the_cpu_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    (tmp_path / "sd").mkdir()
    cfg = bench.make_cfg(bench.SHAPES["tiny"], tmp_path / "sd", "auto")
    assert cfg.device == "auto" and cfg.mixed_precision == "fp16"
    assert bench.device_dtype(cfg) == (torch.device("cpu"), torch.float32)


def test_default_output_is_never_docs():
    docs = Path(bench.__file__).parent / "docs"
    for tiny, digits in ((False, False), (True, False), (False, True)):
        out = bench.default_out(tiny, digits)
        assert out.resolve() != docs.resolve() and docs.resolve() not in out.resolve().parents
    assert bench.default_out(True).name == "bench_tiny" and bench.default_out(False).name == "bench"
    assert bench.default_out(False, digits=True).name == "bench_digits"


def test_digits_class_batch_trains_the_same_tokens(tmp_path, monkeypatch, one_thread):
    """bench.py --digits on 2 classes for 1 epoch: one class at a time (two train_batch calls) against one
    class batch (one call, two slots), the same work both ways and the same tokens (fp32)."""
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    args = ["--digits", "--classes", "2", "--epochs", "1", "--warmup", "0", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    r = json.loads((tmp_path / "benchmarks.json").read_text())
    assert r["device"] == "cpu" and r["dtype"] == "torch.float32" and r["epochs"] == 1
    assert [c["index"] for c in r["classes"]] == [0, 1] and all(c["name"] for c in r["classes"])
    a, b = r["one_at_a_time"], r["class_batch"]
    assert (a["train_batch_calls"], a["runs_per_call"], b["train_batch_calls"], b["runs_per_call"]) == (2, 1, 1, 2)
    size = r["epoch_size"]  # the digits preset's 16
    assert a["images"] == b["images"] == 2 * 1 * size
    assert a["forward_sizes"] == [size] and b["forward_sizes"] == [2 * size]  # both epochs in one forward
    for s in (a, b):
        assert s["wall_s"] > 0 and s["images_per_s"] == pytest.approx(s["images"] / s["wall_s"])
    assert r["speedup"] == pytest.approx(b["images_per_s"] / a["images_per_s"])
    t = r["tokens"]
    assert len(t["per_class"]) == 2 and t["same"] and t["max_abs_diff"] < 1e-4
    for c in t["per_class"]:
        assert c["epochs"] == [1, 1] and c["same_predictions"] and c["loss_max_rel_diff"] < 1e-4
        assert c["token_max_abs_diff"] < 1e-4 and c["kept_max_abs_diff"] < 1e-4
    table = (tmp_path / "benchmarks.md").read_text()
    assert "| one class at a time | 2 | 1 | 16 | 32 |" in table and "| one class batch | 1 | 2 | 32 | 32 |" in table
    assert "Final tokens, class batch vs one at a time: the same" in table


def test_digits_forwards_are_capped_on_the_cpu(tmp_path):
    """Ten digits classes of 16 images: forwards of 64, 64 and 32 on the CPU (train.CPU_FORWARD)."""
    cfg = bench.digits_cfg(tmp_path, 5, "cpu", 10)
    assert cfg.num_train_epochs == 5 and cfg.accuracy_stop == 1.0 and cfg.early_stopping > 5 and cfg.class_batch == 10
    assert bench.forward_sizes(cfg, torch.device("cpu"), 10) == [64, 64, 32]
    assert bench.forward_sizes(cfg, torch.device("cpu"), 1) == [16]


def test_sd14_shapes_refuse_a_cpu_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.main(["--out", str(tmp_path)]) == 2
    assert not (tmp_path / "benchmarks.json").exists()
