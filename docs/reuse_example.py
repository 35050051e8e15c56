"""Reuse trained class tokens in a plain diffusers pipeline of any supported family (quoted in README.md,
run by tests/test_scale.py and tests/test_families.py). SD 1.x/2.x token files hold one tensor named
"newclas"; SDXL, SD3 and FLUX.1 files hold one row per text encoder (clip_l, clip_g, t5xxl). `name`
gives every class its own prompt word, so several classes live in one pipeline."""

from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

# token-file key -> the pipeline's text encoder and tokenizer (SD 1.x/2.x: diffusers' one-tensor file)
ENCODERS = {
    "StableDiffusionXLPipeline": {"clip_l": "", "clip_g": "_2"},
    "StableDiffusion3Pipeline": {"clip_l": "", "clip_g": "_2", "t5xxl": "_3"},
    "FluxPipeline": {"clip_l": "", "t5xxl": "_2"},
}


def add_token(pipe, tensors: dict[str, torch.Tensor], name: str) -> None:
    encoders = ENCODERS.get(type(pipe).__name__)
    if encoders is None:
        return pipe.load_textual_inversion(next(iter(tensors.values())), token=name)
    for key, suffix in encoders.items():
        te, tok = getattr(pipe, "text_encoder" + suffix), getattr(pipe, "tokenizer" + suffix)
        if te is None:  # e.g. SD3 loaded without T5
            continue
        row = tensors[key] if key in tensors else tensors["t5"]  # diffusers' FLUX scripts write "t5"
        if hasattr(pipe, "load_textual_inversion"):
            pipe.load_textual_inversion(row, token=name, text_encoder=te, tokenizer=tok)
        else:  # SD3's pipeline has no loader: the same steps by hand
            tok.add_tokens([name])
            if len(tok) > te.get_input_embeddings().num_embeddings:
                te.resize_token_embeddings(len(tok))
            with torch.no_grad():
                te.get_input_embeddings().weight[tok.convert_tokens_to_ids(name)] = row[0].to(te.dtype)
        if key.startswith("clip"):  # pool at the end-of-text token, not at the new word (as training did)
            te.config.eos_token_id = tok.eos_token_id
            for m in te.modules():
                if "eos_token_id" in vars(m):
                    m.eos_token_id = tok.eos_token_id


def diffusers_only(pipe, tensors: dict[str, torch.Tensor], name: str) -> None:
    """SDXL and FLUX.1 with diffusers' own loader alone: one call per text encoder with that encoder's row.
    The prompt embeddings are the trained ones, but CLIP's pooled vector is then taken at the new word
    (the real configs' `eos_token_id: 2` pools at the highest id), unlike training: `add_token` fixes that."""
    for key, suffix in ENCODERS[type(pipe).__name__].items():
        te, tok = getattr(pipe, "text_encoder" + suffix), getattr(pipe, "tokenizer" + suffix)
        pipe.load_textual_inversion(tensors[key], token=name, text_encoder=te, tokenizer=tok)


def pipeline_with_tokens(model: str, token_files: dict[str, Path]) -> DiffusionPipeline:
    pipe = DiffusionPipeline.from_pretrained(model)
    for name, path in token_files.items():  # e.g. {"<283_tiger_cat>": Path(".../learned_embeds.safetensors")}
        add_token(pipe, load_file(str(path)), name)
    return pipe


def example(model: str = "CompVis/stable-diffusion-v1-4", output_path: str = ".", **kwargs):
    files = Path(output_path).glob("pipeline_token/*/default/learned_embeds.safetensors")
    tokens = {f"<{p.parts[-3]}>": p for p in files}
    pipe = pipeline_with_tokens(model, tokens)
    images = []
    for name in tokens:  # "<283_tiger_cat>" -> "A photo of <283_tiger_cat> tiger cat"
        class_name = name.strip("<>").split("_", 1)[1].replace("_", " ")
        g = torch.Generator().manual_seed(0)
        images += pipe(f"A photo of {name} {class_name}", generator=g, **kwargs).images
    return images
