"""The model card in each token folder: front matter the hub reads (huggingface_hub.ModelCard), the
evaluation table exactly as metrics.json says, the grid beside it, and how to load and upload the token."""

import importlib.metadata
import json
import math
import re
from types import SimpleNamespace

import pytest
from conftest import tiny_args
from huggingface_hub import ModelCard

from run import main

TAGS = ["textual-inversion", "disco", "diffusers", "stable-diffusion", "text-to-image"]
PROMPT = "A photo of disco-2_tiger_cat tiger cat"


def interval(low: float, high: float, signed: bool = False) -> str:
    lo, hi = math.floor(100 * low + 1e-9), math.ceil(100 * high - 1e-9)  # rounded outward, as printed
    return f"[{lo:+d},{hi:+d}]" if signed else f"[{lo}-{hi}]"


def expected_row(role: str, res: dict) -> list[str]:
    """A judge's row from metrics.json alone: accuracies in whole percent, the gain in whole points."""
    gain = f"{round(100 * res['gain']) + 0:+d} {interval(*res['gain_ci'], signed=True)}"
    accuracies = [f"{round(100 * res[f'{k}_accuracy'])}% {interval(*res[f'{k}_ci'])}" for k in ("baseline", "token")]
    return [role, f"`{res['name'].rsplit('/', 1)[-1]} (a local folder)`", *accuracies, gain]


def table_rows(text: str) -> list[list[str]]:
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r] for r in rows[1:] if not set("".join(r)) <= set("- ")]


def test_card_parses_and_its_table_is_metrics_json(tiny, tmp_path):
    out = tmp_path / "out"
    assert main(tiny_args(tiny, out, "--eval_classifier", tiny["clf_b"], "--test_size", "3")) == 0
    folder = out / "pipeline_token" / "2_tiger_cat" / "default"
    card = ModelCard.load(folder / "README.md")
    meta = card.data.to_dict()
    assert "base_model" not in meta and meta["license"] == "other"  # a local model folder: no hub id
    assert meta["tags"] == TAGS and meta["instance_prompt"] == PROMPT
    assert meta["widget"] == [{"text": PROMPT, "output": {"url": "grid.png"}}]
    m = json.loads((folder / "metrics.json").read_text())
    assert table_rows(card.text) == [expected_row(role, m[role]) for role in ("classifier", "eval_classifier")]
    assert "evaluation seeds 0..2" in card.text and "class 2 (tiger cat)" in card.text
    assert (folder / "grid.png").read_bytes() == (out / "img" / "2_tiger_cat" / "default" / "grid.png").read_bytes()
    assert "](grid.png)" in card.text and f"```text\n{PROMPT}\n```" in card.text
    assert 'load_textual_inversion("learned_embeds.safetensors", token="disco-2_tiger_cat")' in card.text
    assert "`embedding:disco-2_tiger_cat`" in card.text and "embeddings/disco-2_tiger_cat.safetensors" in card.text
    assert str(tmp_path) not in card.text  # no path of this machine in a card meant for the hub
    command = re.search(r"\n((?:hf|huggingface-cli) upload .*)\n", card.text)[1]
    assert command == "hf upload <your name>/disco-2_tiger_cat pipeline_token/2_tiger_cat/default"
    scripts = {e.name for e in importlib.metadata.entry_points(group="console_scripts")}
    assert command.split()[0] in scripts  # the installed huggingface_hub's own CLI


def test_card_without_evaluation_has_no_table_and_no_grid(tiny, tmp_path):
    assert main(tiny_args(tiny, tmp_path, "--evaluate", "False")) == 0
    folder = tmp_path / "pipeline_token" / "2_tiger_cat" / "default"
    card = ModelCard.load(folder / "README.md")
    assert "widget" not in card.data.to_dict() and not (folder / "grid.png").exists()
    assert "Not evaluated" in card.text and not table_rows(card.text)


@pytest.mark.parametrize(
    "model, family, license_fields",
    [
        ("CompVis/stable-diffusion-v1-4", "StableDiffusion", {"license": "creativeml-openrail-m"}),
        ("stabilityai/stable-diffusion-xl-base-1.0", "StableDiffusionXL", {"license": "openrail++"}),
        (
            "black-forest-labs/FLUX.1-dev",
            "Flux",
            {"license": "other", "license_name": "flux-1-dev-non-commercial-license"},
        ),
        ("someone/their-sd3", "StableDiffusion3", {"license": "other"}),
    ],
)
def test_card_names_a_hub_model_as_base_model_with_its_license(model, family, license_fields):
    import families
    from config import RunConfig
    from report import card_front_matter

    sd = SimpleNamespace(family=getattr(families, family))
    text = card_front_matter(RunConfig(sd_model=model), sd, PROMPT, has_grid=False)
    meta = ModelCard(text + "\n# card\n").data.to_dict()
    assert meta["base_model"] == model and {k: meta.get(k) for k in license_fields} == license_fields
    assert meta["tags"][3] == sd.family.hub_tag and "widget" not in meta
