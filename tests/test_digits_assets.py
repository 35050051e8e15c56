"""The shipped digits world (digits/pipeline, digits/classifier, digits/classifier_b)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from digits.data import DIGIT_WORDS, load_split  # noqa: E402

DIGITS = os.path.join(ROOT, "digits")
PIPELINE = os.path.join(DIGITS, "pipeline")
CLASSIFIERS = [os.path.join(DIGITS, "classifier"), os.path.join(DIGITS, "classifier_b")]


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(PIPELINE)
    p.set_progress_bar_config(disable=True)
    return p


def test_pipeline_components(pipe):
    from diffusers import DDIMScheduler

    assert isinstance(pipe.scheduler, DDIMScheduler)
    cfg = pipe.scheduler.config
    assert cfg.timestep_spacing == "leading" and cfg.steps_offset == 1 and cfg.clip_sample is False
    assert cfg.beta_schedule == "squaredcos_cap_v2" and cfg.prediction_type == "epsilon"
    assert pipe.unet.config.sample_size == 8 and pipe.vae_scale_factor == 2
    assert pipe.vae.config.scaling_factor != 0.18215
    assert pipe.safety_checker is None


def test_tokenizer(pipe):
    tok = pipe.tokenizer
    assert tok.model_max_length == pipe.text_encoder.config.max_position_embeddings
    assert len(tok("a", add_special_tokens=False).input_ids) == 1
    assert len(tok) == pipe.text_encoder.config.vocab_size
    for w in sorted(set(DIGIT_WORDS)):
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    assert "newclas" not in tok.get_vocab() and "newclas</w>" not in tok.get_vocab()
    ids = tok("a close-up photo of a newclas stick", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(ids) == tok.model_max_length  # fits even before the token is added
    assert os.path.exists(os.path.join(PIPELINE, "tokenizer", "vocab.json"))
    assert os.path.exists(os.path.join(PIPELINE, "tokenizer", "merges.txt"))


def test_every_shipped_model_loads_all_its_weights():
    """The text encoder is stored in the hub's SD layout (`text_model.` prefix): transformers 5 saves it
    without, and 4.x (the floor, tested by .ci/floors) then loads random weights without an error."""
    from safetensors import safe_open
    from transformers import AutoModelForImageClassification, CLIPTextModel

    folder = os.path.join(PIPELINE, "text_encoder")
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())
    loaded = [CLIPTextModel.from_pretrained(folder, output_loading_info=True)[1]]
    loaded += [AutoModelForImageClassification.from_pretrained(p, output_loading_info=True)[1] for p in CLASSIFIERS]
    for info in loaded:
        assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_short_generation(pipe):
    out = pipe(
        "A photo of a four",
        height=16,
        width=16,
        num_inference_steps=3,
        guidance_scale=5.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 3, 16, 16)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


# The judge (classifier_b) learned from the held-out split only, the training classifier from the train split:
# each is measured on the split it never saw, as images and moved by one pixel each way (digits/build.py).
@pytest.mark.parametrize("path, split", [(CLASSIFIERS[0], "held out"), (CLASSIFIERS[1], "train")])
def test_classifier_accuracy_on_the_digits_it_never_saw(path, split):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from selection import SHIFTS, shifted

    model = AutoModelForImageClassification.from_pretrained(path).eval()
    proc = AutoImageProcessor.from_pretrained(path)
    assert [model.config.id2label[i] for i in range(10)] == DIGIT_WORDS
    assert proc.size == {"height": 16, "width": 16}
    x_tr, y_tr, x_te, y_te = load_split()
    x, y = (x_te, y_te) if split == "held out" else (x_tr, y_tr)
    for moved in [x] + [shifted(x, *d) for d in SHIFTS]:
        # through the image processor, from uint8 HWC images as a user would pass them
        images = list((moved.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy())
        with torch.no_grad():
            pred = model(**proc(images=images, return_tensors="pt")).logits.argmax(-1)
        acc = (pred == y).float().mean().item()
        assert acc >= 0.95, acc


def test_classifiers_differ():
    from transformers import AutoConfig

    a, b = (AutoConfig.from_pretrained(p) for p in CLASSIFIERS)
    assert a.model_type != b.model_type


def test_size_budget():
    total = 0
    for dirpath, _, files in os.walk(DIGITS):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files if f.endswith(".safetensors"))
    assert total < 15e6, total
