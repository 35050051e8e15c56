"""Faults: hub failures, non-finite losses, out of memory, kill -9, determinism."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, tiny_args
from PIL import Image
from safetensors.torch import load_file

import run
from utils import UsageError, hub_guard


def _hub_error(kind):
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    if kind == "offline":
        return LocalEntryNotFoundError("offline")
    import httpx2

    cls = {"gated": GatedRepoError, "missing": RepositoryNotFoundError}[kind]
    response = httpx2.Response(401, request=httpx2.Request("GET", "https://example.invalid/org/name"))
    return cls("401 Client Error", response=response)


@pytest.mark.parametrize(
    "kind, needle",
    [("gated", "gated: accept its licence"), ("missing", "no such repository"), ("offline", "not in the local cache")],
)
def test_hub_failures_say_what_to_do(kind, needle):
    with pytest.raises(UsageError, match=needle) as info:
        with hub_guard("Stable Diffusion model org/name"):
            try:  # as transformers does: the hub error wrapped in an OSError
                raise _hub_error(kind)
            except Exception as e:
                raise OSError("wrapped") from e
    assert str(info.value).startswith("Stable Diffusion model org/name: ")


def test_nonfinite_updates_are_skipped_counted_and_stop_the_class(tiny, tmp_path, monkeypatch):
    import classifiers

    forward = classifiers.Classifier.forward
    monkeypatch.setattr(classifiers.Classifier, "forward", lambda self, x: forward(self, x) * float("nan"))
    args = tiny_args(tiny, tmp_path, "--num_train_epochs", "10", "--max_nonfinite", "3", "--evaluate", "False")
    with pytest.warns(UserWarning, match="non-finite"):
        assert run.main(args) == 0
    tok = tmp_path / "pipeline_token" / "2_tiger_cat" / "default"
    summary = json.loads((tok / "train_summary.json").read_text())
    assert summary["nonfinite_skipped"] == 3 and summary["epochs"] == 3 and "non-finite" in summary["stop"]
    log = [json.loads(line) for line in (tok / "train_log.jsonl").read_text().splitlines()]
    assert [e["skipped"] for e in log] == [True] * 3
    assert torch.isfinite(load_file(tok / "learned_embeds.safetensors")["newclas"]).all()


def test_out_of_memory_names_the_setting_to_lower(tiny, tmp_path, monkeypatch, capsys):
    import train

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train, "train_runs", oom)
    assert run.main(tiny_args(tiny, tmp_path)) == 1
    assert "--batch_size" in capsys.readouterr().err


def test_same_config_same_token_bit_for_bit(tiny, tmp_path):
    files = []
    for name in ("a", "b"):
        assert run.main(tiny_args(tiny, tmp_path / name, "--evaluate", "False", "--num_train_epochs", "3")) == 0
        files.append(tmp_path / name / "pipeline_token" / "2_tiger_cat" / "default" / "learned_embeds.safetensors")
    assert files[0].read_bytes() == files[1].read_bytes()
    assert not torch.equal(load_file(files[0])["newclas"], torch.zeros(16))


def _all_files_readable(root):
    for p in root.rglob("*"):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix == ".png":
            Image.open(p).load()
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            [json.loads(line) for line in p.read_text().splitlines()]
        elif p.suffix == ".safetensors":
            load_file(p)


def test_kill_9_leaves_no_broken_file_and_a_rerun_finishes(tiny, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(tiny, out, "--num_train_epochs", "40", "--early_stopping", "100", "--accuracy_stop", "1")
    cmd = [sys.executable, str(ROOT / "run.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    log = out / "pipeline_token" / "2_tiger_cat" / "default" / "train_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert log.exists(), "the run never got going"
    assert not (out / "pipeline_token" / "2_tiger_cat" / "default" / "metrics.json").exists()
    _all_files_readable(out)
    assert subprocess.run([*cmd, "--num_train_epochs", "2"], env=env, capture_output=True).returncode == 0
    _all_files_readable(out)
    assert not list(out.rglob(".*.tmp*")), "temporary files left after the rerun"
    assert (out / "pipeline_token" / "2_tiger_cat" / "default" / "metrics.json").is_file()


def test_a_class_trained_again_keeps_nothing_of_its_earlier_run(tiny, tmp_path):
    """The same class and --exp_id trained again: the earlier run's snapshots, kept token, training and
    evaluation images are gone; evaluating again with other seeds replaces the evaluation images."""
    assert run.main(tiny_args(tiny, tmp_path, "--select_every", "1")) == 0
    token_dir = next((tmp_path / "pipeline_token").glob("*/default"))
    img_dir = tmp_path / "img" / token_dir.parent.name / "default"
    assert (token_dir / "snapshots").is_dir() and (token_dir / "kept_token.safetensors").exists()

    assert run.main(tiny_args(tiny, tmp_path, "--num_train_epochs", "1", "--test_size", "3", "--eval_seed", "9")) == 0
    assert sorted(p.name for p in token_dir.iterdir()) == sorted(
        ["config.json", "learned_embeds.safetensors", "metrics.json", "train_log.jsonl", "train_summary.json"]
        + ["train_curve.png", "README.md", "grid.png"]  # the model card, and the grid it shows
    )
    assert len(list((img_dir / "train").glob("*.png"))) == 2  # one epoch of 2 images
    for kind in ("baseline", "token"):
        names = sorted(p.name[:9] for p in (img_dir / "eval" / kind).iterdir())
        assert names == ["seed00009", "seed00010", "seed00011"]

    assert run.main(tiny_args(tiny, tmp_path, "--train", "False", "--test_size", "1", "--eval_seed", "40")) == 0
    assert [p.name[:9] for p in (img_dir / "eval" / "token").iterdir()] == ["seed00040"]
