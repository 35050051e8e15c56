"""Reuse trained class tokens in a plain diffusers pipeline (quoted in README.md, run by
tests/test_scale.py). Each token file holds one tensor named "newclas"; `token=` gives every
class its own name, so several classes live in one pipeline."""

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline


def pipeline_with_tokens(model: str, token_files: dict[str, Path]) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    for name, path in token_files.items():  # e.g. {"<283_tiger_cat>": Path(".../learned_embeds.safetensors")}
        pipe.load_textual_inversion(str(path), token=name)
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
