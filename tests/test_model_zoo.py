"""model_zoo: each family's tiny pipeline loads back through `DiffusionPipeline.from_pretrained` (offline, as a
hub model loads) and draws a 16-px image; its tokenizers hold the prompt words as single tokens; its configs keep
what real checkpoints do and the project must handle (legacy CLIP eos, T5 embedding rows beyond the tokenizer).
The real sizes tools/bench.py times have the released models' parameter counts."""

import json
from pathlib import Path

import pytest
import torch
from conftest import LABELS, TINY_SIZE
from safetensors.torch import load_file

from digits.tokenizer import words_of
from prompt_datasets import TEMPLATES
from tools.model_zoo import FAMILY_VARIANTS, build, pipeline

CLASS_NAMES = [name for names in LABELS.values() for name in names.split(", ")]  # "tiger cat", "great_white_shark"
PIPELINE_CLASS = {"sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
GUIDANCE = {"sdxl": 5.0, "sdxl-turbo": 0.0, "sd3": 5.0, "flux-schnell": 0.0, "flux-dev": 3.5}  # each model's usual


@pytest.fixture(scope="module", params=FAMILY_VARIANTS)
def zoo(request, tmp_path_factory) -> tuple[str, Path, object]:
    """(variant, folder, pipeline): each variant built once per module and loaded as a user loads a hub model."""
    from diffusers import DiffusionPipeline

    variant = request.param
    folder = build(variant, tmp_path_factory.mktemp(variant) / "pipe", words=CLASS_NAMES)
    return variant, folder, DiffusionPipeline.from_pretrained(folder)


def tokenizers(pipe) -> dict:
    return {name: tok for name, tok in pipe.components.items() if name.startswith("tokenizer") and tok is not None}


def test_loads_as_its_pipeline_and_draws_16px(zoo):
    variant, _, pipe = zoo
    assert type(pipe).__name__ == PIPELINE_CLASS[variant.split("-")[0]]
    image = pipe(
        "A photo of a tiger cat",
        height=TINY_SIZE,
        width=TINY_SIZE,
        num_inference_steps=2,
        guidance_scale=GUIDANCE[variant],
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert image.shape == (1, 3, TINY_SIZE, TINY_SIZE) and torch.isfinite(image).all()


def test_prompt_words_are_single_tokens(zoo):
    texts = [t.format("") for t in TEMPLATES] + ["a", *CLASS_NAMES]
    for name, tok in tokenizers(zoo[2]).items():
        t5 = "T5" in type(tok).__name__
        # CLIP splits "great_white_shark" and "close-up" into units (digits.tokenizer.words_of); T5 only at spaces
        words = {w for text in texts for w in text.split()} if t5 else words_of(texts)
        assert all(len(tok.encode(w, add_special_tokens=False)) == 1 for w in words), name
        assert tok("").input_ids == ([tok.eos_token_id] if t5 else [tok.bos_token_id, tok.eos_token_id]), name


def test_legacy_eos_is_the_only_difference(zoo, tmp_path):
    """legacy_eos=True writes CLIP's old eos_token_id 2, as the real configs do, and transformers' CLIP then pools
    at the largest id: an added token's (what the project has to fix); False writes the tokenizer's EOS, which
    pools at EOS. The weights are the same (the build is seeded)."""
    from transformers import CLIPTextModel

    variant, legacy, pipe = zoo
    fixed = build(variant, tmp_path / "pipe", words=CLASS_NAMES, legacy_eos=False)
    encoders = [n for n, m in pipe.components.items() if type(m).__name__.startswith("CLIPText")]
    assert encoders
    for name in encoders:
        tok = pipe.components[name.replace("text_encoder", "tokenizer")]
        assert pipe.components[name].config.eos_token_id == 2
        assert json.loads((fixed / name / "config.json").read_text())["eos_token_id"] == tok.eos_token_id
    for weights in sorted(legacy.glob("*/*.safetensors")):
        a, b = load_file(weights), load_file(fixed / weights.relative_to(legacy))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights

    tok = pipe.tokenizer
    ids = torch.tensor([[tok.bos_token_id, tok.encode("a", add_special_tokens=False)[0], len(tok), tok.eos_token_id]])
    for folder, pooled_at in ((legacy, 2), (fixed, 3)):
        te = CLIPTextModel.from_pretrained(folder / "text_encoder")
        te.resize_token_embeddings(len(tok) + 1)  # id len(tok) = a token added after the build
        with torch.no_grad():
            out = te(ids)
        assert torch.allclose(out.pooler_output[0], out.last_hidden_state[0, pooled_at]), folder


def test_t5_embedding_has_rows_beyond_the_tokenizer(zoo):
    """As T5-XXL (32128 rows, 32100 entries): shrinking the table to len(tokenizer) would be a bug. SDXL has
    two CLIP encoders and no T5."""
    variant, _, pipe = zoo
    t5 = [(n, m) for n, m in pipe.components.items() if type(m).__name__ == "T5EncoderModel"]
    assert bool(t5) != variant.startswith("sdxl"), variant
    if not t5:
        return
    (name, encoder), tok = t5[0], pipe.components[t5[0][0].replace("text_encoder", "tokenizer")]
    assert encoder.get_input_embeddings().num_embeddings > len(tok), name


# The released checkpoints' parameter counts per model (text encoders before a word is added).
REAL_PARAMETERS = {
    "sdxl": dict(unet=2_567_463_684, vae=83_653_863, text_encoder=123_060_480, text_encoder_2=694_659_840),
    "flux-schnell": dict(
        transformer=11_891_178_560, vae=83_819_683, text_encoder=123_060_480, text_encoder_2=4_762_310_656
    ),
    "flux-dev": dict(
        transformer=11_901_408_320, vae=83_819_683, text_encoder=123_060_480, text_encoder_2=4_762_310_656
    ),
}
REAL_PARAMETERS["sdxl-turbo"] = REAL_PARAMETERS["sdxl"]


@pytest.mark.parametrize("variant", REAL_PARAMETERS)
def test_real_shapes_have_the_released_sizes(variant):
    """tools/bench.py's real-size models, built on the meta device (no memory, no time): the released models'
    parameter counts, CLIP's 49408 and T5's 32128 embedding rows, the denoiser in the run's dtype and the rest
    in fp32, and the VAE's and sampler's settings."""
    pipe = pipeline(variant, CLASS_NAMES, shape="real", device="meta", dtype=torch.bfloat16)
    models = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    assert {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()} == REAL_PARAMETERS[variant]
    denoiser = "transformer" if "flux" in variant else "unet"
    for name, m in models.items():
        assert {p.device.type for p in m.parameters()} == {"meta"}, name
        assert {p.dtype for p in m.parameters()} == {torch.bfloat16 if name == denoiser else torch.float32}, name
    assert len(pipe.tokenizer) == pipe.text_encoder.get_input_embeddings().num_embeddings == 49408
    vae = pipe.vae.config
    if "flux" in variant:
        assert pipe.text_encoder_2.get_input_embeddings().num_embeddings == 32128
        assert pipe.transformer.config.guidance_embeds == (variant == "flux-dev")
        assert (vae.latent_channels, vae.scaling_factor, vae.shift_factor) == (16, 0.3611, 0.1159)
    else:
        assert len(pipe.tokenizer_2) == pipe.text_encoder_2.get_input_embeddings().num_embeddings == 49408
        assert (vae.latent_channels, vae.scaling_factor, vae.force_upcast) == (4, 0.13025, True)
        spacing = "trailing" if variant == "sdxl-turbo" else "leading"
        assert pipe.scheduler.config.timestep_spacing == spacing


def test_no_real_size_sd3():
    with pytest.raises(ValueError, match="shape 'real'"):
        pipeline("sd3", shape="real", device="meta")


def test_command_line_builds_a_folder_that_loads(tmp_path):
    """README's `python tools/model_zoo.py sdxl out/tiny_sdxl --words ...`."""
    import os
    import subprocess
    import sys

    from diffusers import DiffusionPipeline

    root = Path(__file__).resolve().parents[1]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        str(root / "tools" / "model_zoo.py"),
        "sdxl",
        str(tmp_path / "m"),
        "--words",
        "loop",
        "stick",
    ]
    assert subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300).returncode == 0
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "m"))
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and len(pipe.tokenizer.tokenize("stick")) == 1
