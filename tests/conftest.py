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

LABELS = {0: "tabby, tabby cat", 1: "tiger cat", 2: "crane", 3: "crane", 4: "great_white_shark"}
TINY_SIZE = 16


def build_tiny_pipeline(path: Path) -> Path:
    """tools/bench.py's tiny shapes: the same builder makes the benchmark's SD 1.4-shaped models
    (PNDM scheduler as SD 1.4, CLIP-style tokenizer padded to 49408 entries, 77 positions)."""
    from tools.bench import SHAPES, build_pipeline

    build_pipeline(SHAPES["tiny"], path)
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


@pytest.fixture()
def judges_and_seeds(monkeypatch) -> list[tuple]:
    """Records which classifier selection.classify is given ("judge", name) and which seeds evaluate.generate
    draws ("seeds", list), so a test can check that only the training classifier and the selection seeds
    take part."""
    import evaluate
    import selection

    seen, real_classify, real_generate = [], selection.classify, evaluate.generate
    monkeypatch.setattr(
        selection, "classify", lambda clf, *a: seen.append(("judge", clf.name)) or real_classify(clf, *a)
    )
    monkeypatch.setattr(
        evaluate, "generate", lambda sd, p, seeds, *a: seen.append(("seeds", seeds)) or real_generate(sd, p, seeds, *a)
    )
    return seen
