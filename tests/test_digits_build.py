"""digits/build.py: a few steps of every stage into a temp folder, loaded by the ordinary loaders."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from digits import build  # noqa: E402
from digits.data import CAPTION_TEMPLATES, DIGIT_WORDS, load_split  # noqa: E402
from digits.tokenizer import build_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits_world")
    build.main(["--out", str(out), "--quick", "--threads", "1"])
    return out


def test_quick_build_loads(quick_world):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    pipe = StableDiffusionPipeline.from_pretrained(quick_world / "pipeline")
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.timestep_spacing == "leading"
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings
    pipe.set_progress_bar_config(disable=True)
    img = pipe(
        "A photo of a two",
        height=16,
        width=16,
        num_inference_steps=2,
        guidance_scale=5.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert img.shape == (1, 3, 16, 16)
    for name in ("classifier", "classifier_b"):
        model = AutoModelForImageClassification.from_pretrained(quick_world / name)
        proc = AutoImageProcessor.from_pretrained(quick_world / name)
        assert [model.config.id2label[i] for i in range(10)] == DIGIT_WORDS
        x = proc(images=[(img[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")], return_tensors="pt")
        assert x["pixel_values"].shape == (1, 3, 16, 16)
        assert model(**x).logits.shape == (1, 10)
    from safetensors import safe_open

    with safe_open(quick_world / "pipeline" / "text_encoder" / "model.safetensors", "pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())  # the hub layout, loaded by transformers 4 and 5
    assert (quick_world / "pipeline" / "tokenizer" / "vocab.json").exists()
    assert (quick_world / "pipeline" / "tokenizer" / "merges.txt").exists()
    assert (quick_world / "build_info.json").exists()


def test_classifier_stage_is_deterministic(tmp_path):
    a = build.build(str(tmp_path / "a"), steps_scale=0.005, threads=1, stages=("classifier_b",))
    b = build.build(str(tmp_path / "b"), steps_scale=0.005, threads=1, stages=("classifier_b",))
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "a" / "classifier_b" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "classifier_b" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["classifier_b_unseen_accuracy"] == b["classifier_b_unseen_accuracy"]


def test_script_entry_points():
    for cmd in ([sys.executable, "digits/build.py", "--help"], [sys.executable, "-m", "digits.build", "--help"]):
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "--steps-scale" in r.stdout


def test_tokenizer_fast_and_complete(tmp_path):
    words = [t.replace("{}", "") for t in CAPTION_TEMPLATES] + sorted(set(DIGIT_WORDS))
    t0 = time.perf_counter()
    tok = build_tokenizer(words, out_dir=str(tmp_path / "tok"))
    assert time.perf_counter() - t0 < 1.0
    for text in words:
        for w in text.lower().replace("-", " - ").split():
            assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert tok.bos_token == "<|startoftext|>"
    assert "newclas</w>" not in tok.get_vocab() and "newclas" not in tok.get_vocab()
    assert len(tok("newclas", add_special_tokens=False).input_ids) > 1
    n = len(tok)
    assert tok.add_tokens("newclas") == 1
    ids = tok("A photo of newclas stick", add_special_tokens=False).input_ids
    assert len(ids) == 5 and ids[3] == n
    from transformers import CLIPTokenizer

    again = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert again("A photo of a loop").input_ids == build_tokenizer(words)("A photo of a loop").input_ids
    # vocab.json and merges.txt alone give the same tokenizer (transformers 4.x and 5.x both read them).
    (tmp_path / "plain").mkdir()
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "plain" / name).write_bytes((tmp_path / "tok" / name).read_bytes())
    plain = CLIPTokenizer.from_pretrained(tmp_path / "plain")
    assert plain("a close-up photo of a curl").input_ids == again("a close-up photo of a curl").input_ids


def test_split_is_fixed_and_stratified():
    x_tr, y_tr, x_te, y_te = load_split()
    assert x_tr.shape[1:] == (3, 16, 16) and len(y_tr) + len(y_te) == 1797
    assert 0.0 <= float(x_tr.min()) and float(x_tr.max()) <= 1.0
    assert torch.bincount(y_te, minlength=10).min() >= 30
    x_tr2, _, _, y_te2 = load_split()
    assert torch.equal(x_tr, x_tr2) and torch.equal(y_te, y_te2)
