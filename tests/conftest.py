"""Tiny components built from configs and saved in the hub layouts, so every test loads them
through the same code that loads Stable Diffusion 1.4 and the real classifiers."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

LABELS = {
    0: "tabby, tabby cat",
    1: "tiger cat",
    2: "crane",
    3: "crane",
    4: "great_white_shark",
}
TINY_SIZE = 16


def build_tiny_pipeline(path: Path, seed: int = 0) -> Path:
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from digits.tokenizer import build_tokenizer
    from prompt_datasets import TEMPLATES

    torch.manual_seed(seed)
    words = TEMPLATES + ["a", "tabby", "tiger cat", "crane", "great white shark"]
    tok = build_tokenizer(words, model_max_length=16)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=TINY_SIZE,
        scaling_factor=0.18215,
    )
    # The SD 1.4 scheduler (REFERENCE.md section 6).
    sched = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_vit(path: Path, seed: int = 0, labels: dict = LABELS) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=TINY_SIZE,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=len(labels),
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    ViTForImageClassification(cfg).save_pretrained(path)
    size = {"height": TINY_SIZE, "width": TINY_SIZE}
    ViTImageProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=2).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    return dict(
        sd=str(build_tiny_pipeline(root / "sd")),
        clf=str(build_tiny_vit(root / "clf")),
        clf_b=str(build_tiny_vit(root / "clf_b", seed=1)),
    )


def tiny_args(tiny: dict, out: Path, *extra: str) -> list[str]:
    """CLI arguments for a seconds-long run on the tiny models (later flags override)."""
    args = "--class_index 2 --height 16 --width 16 --num_of_SD_inference_steps 3 --eval_steps 3 --device cpu"
    args += " --num_train_epochs 2 --epoch_size 2 --test_size 2"
    paths = ["--sd_model", tiny["sd"], "--classifier", tiny["clf"], "--output_path", str(out)]
    return [*args.split(), *paths, *extra]
