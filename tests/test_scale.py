"""Many classes: selection by name, one row per class in results.csv, resuming, data
generation, several processes, reuse in a plain diffusers pipeline."""

import csv
import json
import os
import subprocess
import sys

from conftest import ROOT, tiny_args

from run import main


def rows(out):
    return list(csv.DictReader((out / "results.csv").open()))


def test_class_name_selects_and_reruns_replace_rows(tiny, tmp_path):
    out = tmp_path / "out"
    assert main(tiny_args(tiny, out, "--class_name", "Tiger Cat")) == 0
    assert main(tiny_args(tiny, out, "--class_index", "2,5")) == 0
    r = rows(out)
    assert [x["class_index"] for x in r] == ["2", "5"]  # class 2 rerun: replaced, not duplicated
    assert r[0]["class_name"] == "tiger cat" and r[0]["token_path"].endswith(
        "2_tiger_cat/default/learned_embeds.safetensors"
    )


def test_skip_exists_resumes_without_retraining(tiny, tmp_path):
    out = tmp_path / "out"
    assert main(tiny_args(tiny, out, "--class_index", "2")) == 0
    summary = out / "pipeline_token" / "2_tiger_cat" / "default" / "train_summary.json"
    before = summary.stat().st_mtime_ns
    assert main(tiny_args(tiny, out, "--class_index", "2-3", "--skip_exists", "True")) == 0
    assert summary.stat().st_mtime_ns == before
    assert [x["class_index"] for x in rows(out)] == ["2", "3"]


def test_generate_writes_an_imagefolder(tiny, tmp_path):
    from torchvision.datasets import ImageFolder

    out = tmp_path / "out"
    assert main(tiny_args(tiny, out, "--class_index", "2,5", "--evaluate", "False", "--generate", "3")) == 0
    ds = ImageFolder(str(out / "generated"))
    assert ds.classes == ["2_tiger_cat", "5_great_white_shark"] and len(ds) == 6
    assert ds[0][0].size == (16, 16)


def test_generate_resumes_the_same_token_and_replaces_another(tiny, tmp_path):
    """--generate keeps the images of the same token (resume) and replaces those of another (the class
    trained again), as source.json records."""
    out, folder = tmp_path / "out", tmp_path / "out" / "generated" / "2_tiger_cat"
    assert main(tiny_args(tiny, out, "--evaluate", "False", "--generate", "2")) == 0
    first = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    stamp = json.loads((folder / "source.json").read_text())
    assert main(tiny_args(tiny, out, "--train", "False", "--evaluate", "False", "--generate", "3")) == 0
    assert {p.name: p.read_bytes() for p in folder.glob("0000[01].png")} == first and (folder / "00002.png").exists()
    assert main(tiny_args(tiny, out, "--evaluate", "False", "--generate", "1", "--seed", "7", "--lr", "5")) == 0
    assert sorted(p.name for p in folder.glob("*.png")) == ["00000.png"]
    assert json.loads((folder / "source.json").read_text())["token_sha256"] != stamp["token_sha256"]
    assert (folder / "00000.png").read_bytes() != first["00000.png"]


def test_processes_share_the_classes(tiny, tmp_path):
    """Two processes (accelerate's launcher, on CPU): each class trained exactly once."""
    out = tmp_path / "out"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(
        [*launch, str(ROOT / "run.py"), *tiny_args(tiny, out, "--class_index", "1-5")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    procs = {}
    for d in (out / "pipeline_token").iterdir():
        procs[d.name] = json.loads((d / "default" / "train_summary.json").read_text())["process"]
    assert len(procs) == 5 and sorted(procs.values()) == [0, 0, 0, 1, 1]
    assert [x["class_index"] for x in rows(out)] == ["1", "2", "3", "4", "5"]
    # one learned line, one report line and one summary table row: each class is reported once
    assert r.stdout.count("great white shark") == 3 and r.stdout.count("class 5 (great white shark): [") == 1


def test_readme_reuse_example_runs_and_is_quoted(tiny, tmp_path):
    sys.path.insert(0, str(ROOT / "docs"))
    from reuse_example import example

    out = tmp_path / "out"
    assert main(tiny_args(tiny, out, "--class_index", "2,5", "--evaluate", "False")) == 0
    images = example(tiny["sd"], str(out), height=16, width=16, num_inference_steps=2)
    assert len(images) == 2 and images[0].size == (16, 16)
    code = (ROOT / "docs" / "reuse_example.py").read_text()
    body = code[code.index("def pipeline_with_tokens") : code.index("    return pipe\n") + len("    return pipe")]
    assert body.strip() in (ROOT / "README.md").read_text()
