"""SDXL (and -Turbo), SD3 and FLUX.1 (schnell- and dev-like) on tiny models built from configs
(tools/model_zoo.py), saved and loaded back through `--sd_model` as a user's hub model: the project's loop
gives the pipeline's own images, the gradient reaches every trained row and nothing else, the token
files load into diffusers, and run.py trains and evaluates each family."""

import json
import shutil
import sys

import pytest
import torch
from conftest import LABELS, ROOT, tiny_args
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import diffusion
from diffusion import encode, generate, initial_noise, load_sd, set_token
from tokens import load_token, save_token
from train import train_step

sys.path.insert(0, str(ROOT / "docs"))
from reuse_example import add_token, diffusers_only  # noqa: E402

WORDS = sorted({w for name in LABELS.values() for w in name.replace(",", " ").split()})
GUIDANCE = {"sdxl": 5.0, "sdxl-turbo": 0.0, "sd3": 5.0, "flux-schnell": 0.0, "flux-dev": 3.5}
PROMPT = "A photo of newclas crane"
# Our loop's images against the pipeline's: measured up to 1.0e-6 apart (SDXL: 3 seeds in batches of 1, 2
# and 3) under OMP_NUM_THREADS 1 and 2 and ATen's AVX2 and AVX-512 kernels; a start 1e-3 away moves them >= 2e-4.
IMAGE_ATOL = 3e-6
# Prompt embeddings of our encoders against the pipeline's with the token file: measured up to 1.7e-5 apart
# (FLUX's T5, values up to 3; rtol below) under the same settings; a token 1e-3 away moves them >= 1e-3.
EMBEDS_ATOL, EMBEDS_RTOL = 5e-5, 1e-4


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict:
    from tools.model_zoo import FAMILY_VARIANTS, build

    root = tmp_path_factory.mktemp("zoo")
    return {v: str(build(v, root / v, WORDS)) for v in FAMILY_VARIANTS}


def _sd(zoo, variant, train_encoders=""):
    cpu = torch.device("cpu")
    return load_sd(
        zoo[variant],
        cpu,
        torch.float32,
        size=(16, 16),
        placeholder="newclas",
        initializer="a",
        train_encoders=train_encoders,
    )


def _pipe(zoo, variant):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(zoo[variant])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _same_images(ours, theirs):
    torch.testing.assert_close(ours, theirs, atol=IMAGE_ATOL, rtol=0)


def _same_embeds(ours, theirs):
    torch.testing.assert_close(ours, theirs, atol=EMBEDS_ATOL, rtol=EMBEDS_RTOL)


def _images(pipe, prompt, seeds, guidance):
    kw = dict(height=16, width=16, num_inference_steps=2, guidance_scale=guidance, output_type="pt")
    return torch.cat([pipe(prompt, generator=torch.Generator().manual_seed(s), **kw).images for s in seeds])


@pytest.mark.parametrize("variant", list(GUIDANCE))
def test_loop_without_gradient_gives_the_pipelines_images(zoo, variant, monkeypatch):
    sd = _sd(zoo, variant)
    ours = generate(sd, "A photo of a crane", [0, 1, 2], steps=2, guidance=GUIDANCE[variant], batch_size=2)
    theirs = _images(_pipe(zoo, variant), "A photo of a crane", [0, 1, 2], GUIDANCE[variant])
    _same_images(ours, theirs)
    assert not torch.equal(ours[0], ours[1])
    # The comparison sees a real difference: starting noises 1e-3 away.
    noise = diffusion.initial_noise
    monkeypatch.setattr(diffusion, "initial_noise", lambda *a, **k: noise(*a, **k) + 1e-3)
    off = generate(sd, "A photo of a crane", [0, 1, 2], steps=2, guidance=GUIDANCE[variant], batch_size=2)
    with pytest.raises(AssertionError):
        _same_images(off, theirs)


@pytest.mark.parametrize("variant", ["sdxl", "flux-dev"])
def test_diffusers_own_loader_gives_the_embeddings_but_pools_at_the_new_word(zoo, variant, tmp_path):
    """docs/reuse_example.py's diffusers_only: per-encoder load_textual_inversion gives the trained prompt
    embeddings; CLIP's pooled vector differs from training's until add_token moves pooling back."""
    sd = _sd(zoo, variant)
    value = sd.init_embedding + torch.randn(sd.init_embedding.shape, generator=torch.Generator().manual_seed(0))
    save_token(tmp_path / "t.safetensors", sd, "newclas", value)
    set_token(sd, value)
    pipe = _pipe(zoo, variant)
    diffusers_only(pipe, load_file(tmp_path / "t.safetensors"), "newclas")
    ours = encode(sd, [PROMPT])
    embeds, pooled = _pipeline_prompt(pipe, variant)
    _same_embeds(ours.embeds, embeds)
    assert not torch.allclose(ours.pooled, pooled, atol=1e-4)


@pytest.mark.parametrize("variant", ["sdxl", "sd3", "flux-dev"])
def test_token_file_loads_into_diffusers_with_the_same_embeddings(zoo, variant, tmp_path):
    sd = _sd(zoo, variant, "clip_l,clip_g,t5xxl" if variant == "sd3" else "")
    value = sd.init_embedding + torch.randn(sd.init_embedding.shape, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "learned_embeds.safetensors"
    save_token(path, sd, "newclas", value)
    tensors = load_file(path)
    expected = {"sdxl": ["clip_g", "clip_l"], "sd3": ["clip_g", "clip_l", "t5xxl"], "flux-dev": ["clip_l", "t5xxl"]}
    assert sorted(tensors) == expected[variant] and all(t.ndim == 2 and len(t) == 1 for t in tensors.values())
    assert torch.equal(load_token(path, sd, "newclas"), value)
    set_token(sd, value)

    pipe = _pipe(zoo, variant)
    add_token(pipe, tensors, "newclas")  # docs/reuse_example.py: what the README tells users
    ours = encode(sd, [PROMPT])
    embeds, pooled = _pipeline_prompt(pipe, variant)
    _same_embeds(ours.embeds, embeds)
    torch.testing.assert_close(ours.pooled, pooled, atol=1e-6, rtol=0)
    g = GUIDANCE[variant]
    _same_images(generate(sd, PROMPT, [5], 2, g, 1), _images(pipe, PROMPT, [5], g))
    # The comparison sees a real difference: the file's rows 1e-3 away (FLUX's T5 row is the one its
    # embeddings show; a 1e-3 change of its CLIP row moves the pooled vector by less than 1e-6).
    shifted = _pipe(zoo, variant)
    add_token(shifted, {k: t + 1e-3 for k, t in tensors.items()}, "newclas")
    with pytest.raises(AssertionError):
        _same_embeds(ours.embeds, _pipeline_prompt(shifted, variant)[0])


def _pipeline_prompt(pipe, variant) -> tuple[torch.Tensor, torch.Tensor]:
    """PROMPT's embeddings and pooled vector as the pipeline makes them."""
    if variant == "flux-dev":
        embeds, pooled, _ = pipe.encode_prompt(PROMPT, prompt_2=None, device="cpu")
    else:
        embeds, _, pooled, _ = pipe.encode_prompt(
            PROMPT, **({"prompt_2": None, "prompt_3": None} if variant == "sd3" else {}), device="cpu",
            num_images_per_prompt=1, do_classifier_free_guidance=False,
        )  # fmt: skip
    return embeds, pooled


def test_legacy_clip_config_pools_at_the_end_of_text_not_at_the_new_word(zoo):
    """Real SDXL/SD3/FLUX CLIP configs say eos_token_id 2, which makes transformers pool at the highest id:
    the added word. The loaded model pools at the end-of-text token instead."""
    pipe = _pipe(zoo, "sdxl")
    tok, te = pipe.tokenizer_2, pipe.text_encoder_2
    assert te.config.eos_token_id == 2 != tok.eos_token_id  # the legacy config, as the real ones
    tok.add_tokens(["newclas"])
    te.resize_token_embeddings(len(tok))
    ids = tok([PROMPT], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    new, end = (
        (ids[0] == tok.convert_tokens_to_ids("newclas")).nonzero().item(),
        ids[0].tolist().index(tok.eos_token_id),
    )
    out = te.text_model(ids)
    assert torch.equal(out.pooler_output[0], out.last_hidden_state[0, new])  # legacy: pooled at S_c

    sd = _sd(zoo, "sdxl")
    out = sd.text_encoder_2.text_model(ids)
    assert torch.equal(out.pooler_output[0], out.last_hidden_state[0, end]) and new < end


@pytest.mark.parametrize(
    ("variant", "train_encoders", "trained"),
    [
        ("sdxl", "", ["clip_l", "clip_g"]),
        ("sdxl-turbo", "clip_g", ["clip_g"]),  # guidance 0: the conditional pass alone, so S_c has a gradient
        ("sd3", "", ["clip_l", "clip_g"]),
        ("flux-schnell", "clip_l,t5xxl", ["clip_l", "t5xxl"]),
        ("flux-dev", "", ["clip_l"]),
    ],
)
def test_gradient_reaches_every_trained_row_and_only_those(zoo, tiny, variant, train_encoders, trained):
    from classifiers import load_classifier
    from config import RunConfig

    sd = _sd(zoo, variant, train_encoders)
    assert [e.key for e, _ in sd.trained()] == trained
    clf = load_classifier(tiny["clf"], "auto")
    cfg = RunConfig(num_of_SD_inference_steps=2, grad_steps=1, guidance_scale=GUIDANCE[variant], height=16, width=16)
    frozen = {n: p.detach().clone() for m in (sd.denoiser, sd.vae) for n, p in m.named_parameters()}
    rows = {e.key: e.model.get_input_embeddings().weight.detach().clone() for e in sd.encoders}
    loss, _, _ = train_step(sd, clf, [PROMPT, PROMPT], initial_noise(sd, n=2, seed=0), 2, cfg)
    loss.sum().backward()
    for e, part in sd.trained():
        grad = sd.token.grad[part]
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, e.key
    assert all(not p.requires_grad for m in (sd.denoiser, sd.vae) for p in m.parameters())
    assert all(torch.equal(p, frozen[n]) for m in (sd.denoiser, sd.vae) for n, p in m.named_parameters())
    assert all(torch.equal(e.model.get_input_embeddings().weight, rows[e.key]) for e in sd.encoders)
    untrained = [e for e in sd.encoders if not e.trained]
    assert all(torch.equal(e.model.get_input_embeddings().weight[e.slot_ids[0]], e.init) for e in untrained)


def test_t5_table_keeps_its_spare_rows(zoo):
    pipe = _pipe(zoo, "flux-schnell")
    rows, entries = pipe.text_encoder_2.get_input_embeddings().num_embeddings, len(pipe.tokenizer_2)
    assert rows > entries  # as T5-XXL: 32128 rows, 32100 entries
    sd = _sd(zoo, "flux-schnell")
    assert sd.text_encoder_2.get_input_embeddings().num_embeddings == rows


@pytest.mark.parametrize("variant", ["sdxl", "sd3", "flux-schnell"])
def test_run_py_trains_saves_and_evaluates(zoo, tiny, variant, tmp_path, monkeypatch):
    import run

    # The family comes from model_index.json: a misleading folder name changes nothing.
    model = tmp_path / "stable-diffusion-v1-4"
    shutil.copytree(zoo[variant], model)
    extra = ["--sd_model", str(model), "--guidance_scale", "5", "--eval_guidance_scale", "5"]
    assert run.main(tiny_args(tiny, tmp_path / "out", *extra)) == 0
    folder = tmp_path / "out" / "pipeline_token" / "2_tiger_cat" / "default"
    keys = {"sdxl": {"clip_l", "clip_g"}, "sd3": {"clip_l", "clip_g", "t5xxl"}, "flux-schnell": {"clip_l", "t5xxl"}}
    tokens = load_file(folder / "learned_embeds.safetensors")
    assert set(tokens) == keys[variant]
    webui = load_file(tmp_path / "out" / "embeddings" / "disco-2_tiger_cat.safetensors")  # ComfyUI, AUTOMATIC1111
    assert set(webui) == keys[variant] and all(torch.equal(webui[k], tokens[k]) for k in tokens)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert len(metrics["classifier"]["token_predictions"]) == 2
    card = ModelCard.load(folder / "README.md")
    assert card.data.tags[3] == {"sdxl": "sdxl", "sd3": "sd3", "flux-schnell": "flux"}[variant]
    loads = {"sdxl": 'rows["clip_g"], token="disco-2_tiger_cat", text_encoder=pipe.text_encoder_2,'}
    loads |= {"flux-schnell": 'rows["t5xxl"], token="disco-2_tiger_cat", text_encoder=pipe.text_encoder_2,'}
    loads |= {"sd3": 'add_token(pipe, load_file("learned_embeds.safetensors"), "disco-2_tiger_cat")'}
    assert loads[variant] in card.text
    code = card.text.split("```python\n", 1)[1].split("image = pipe(", 1)[0].replace("<base model>", str(model))
    monkeypatch.chdir(folder)  # the card's code runs in the token folder
    scope = {"add_token": add_token}
    exec(code, scope)  # the card's own lines load every row
    pipe, family = scope["pipe"], _sd(zoo, variant).family
    for te, tok, key in family.encoders:
        ids = getattr(pipe, tok).convert_tokens_to_ids("disco-2_tiger_cat")
        assert torch.equal(getattr(pipe, te).get_input_embeddings().weight[ids], tokens[key][0]), key


@pytest.mark.parametrize(
    ("variant", "flags", "message"),
    [
        ("sdxl", ["--train_encoders", "t5xxl"], "--train_encoders 't5xxl': this SDXL model has clip_l, clip_g"),
        ("flux-dev", ["--pad_to_longest"], "--pad_to_longest: reproduces the original's SD 1.x computation"),
        ("sd3", ["--height", "20"], "--height 20: must be a positive multiple of 8"),
    ],
)
def test_bad_combinations_exit_2_with_one_line(zoo, tiny, tmp_path, capsys, variant, flags, message):
    import run

    assert run.main(tiny_args(tiny, tmp_path, "--sd_model", zoo[variant], *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_unsupported_pipeline_is_refused_by_its_class_name(zoo, tiny, tmp_path, capsys):
    import run

    model = tmp_path / "img2img"
    shutil.copytree(zoo["sdxl"], model)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps(index | {"_class_name": "StableDiffusionXLImg2ImgPipeline"}))
    assert run.main(tiny_args(tiny, tmp_path, "--sd_model", str(model))) == 2
    err = capsys.readouterr().err.strip()
    assert "a StableDiffusionXLImg2ImgPipeline; supported text-to-image pipelines" in err
