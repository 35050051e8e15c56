"""Evaluation (token prompt vs baseline prompt on the same seeds) and data generation."""

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffusion import generate, set_token
from prompt_datasets import EVAL_TEMPLATE, class_prompt
from stats import paired_gain, wilson
from train import load_token
from utils import comparison_grid, save_image, write_json

GENERATE_SEED_OFFSET = 1_000_000  # --generate seeds never overlap evaluation seeds


@torch.no_grad()
def classify(clf, images: torch.Tensor, batch_size: int, device) -> list[int]:
    preds = []
    for i in range(0, len(images), batch_size):
        preds += clf(images[i : i + batch_size].to(device)).argmax(1).tolist()
    return preds


def evaluate_class(cfg, sd, classifiers: dict, target: int, name: str, paths) -> dict:
    """Generate the evaluation seeds with "A photo of S_c <class>" and "A photo of a <class>",
    classify both with every classifier, save images, the grid and metrics.json."""
    start = time.time()
    set_token(sd, load_token(paths.token, cfg.placeholder_token))  # base model + the saved token
    seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.test_size))
    prompts = {
        "token": class_prompt(EVAL_TEMPLATE, cfg.placeholder_token, name),
        "baseline": class_prompt(EVAL_TEMPLATE, "a", name),
    }
    metrics = dict(class_index=target + 1, class_name=name, exp_id=cfg.exp_id, seeds=seeds, prompts=prompts)
    metrics["settings"] = dict(sd_model=cfg.sd_model, steps=cfg.eval_steps, guidance_scale=cfg.eval_guidance_scale)
    metrics["intervals"] = "95%: Wilson score (accuracies); Newcombe's paired square-and-add (gain), stats.py"
    rows, main = [], next(iter(classifiers))
    for kind in ("baseline", "token"):
        images = generate(sd, prompts[kind], seeds, cfg.eval_steps, cfg.eval_guidance_scale, cfg.eval_batch_size)
        for role, clf in classifiers.items():
            preds = classify(clf, images, cfg.eval_batch_size, sd.device)
            res = metrics.setdefault(role, dict(name=clf.name))
            res[f"{kind}_accuracy"] = sum(p == target for p in preds) / len(preds)
            res[f"{kind}_predictions"] = preds
        preds = metrics[main][f"{kind}_predictions"]
        labels = classifiers[main].labels
        for seed, im, p in zip(seeds, images, preds):
            save_image(paths.img_dir / "eval" / kind / f"seed{seed:05d}_{p}_{labels[p]}.png", im)
        rows.append((f"{kind}: {prompts[kind]}", list(images), [f"{p} {labels[p]}" for p in preds]))
    for role in classifiers:
        metrics[role].update(intervals(metrics[role], target))
    save_image(paths.img_dir / "grid.png", comparison_grid(rows))
    metrics["seconds"] = round(time.time() - start, 2)
    write_json(paths.metrics, metrics)
    return metrics


def intervals(res: dict, target: int) -> dict:
    """95% intervals from one classifier's per-seed predictions (stats.py): Wilson for each accuracy,
    Newcombe's paired interval for the gain (both prompts were judged on the same seeds)."""
    hits = {kind: [p == target for p in res[f"{kind}_predictions"]] for kind in ("baseline", "token")}
    out = {f"{kind}_ci": list(wilson(sum(h), len(h))) for kind, h in hits.items()}
    gain, low, high = paired_gain(hits["token"], hits["baseline"])
    return out | dict(gain=gain, gain_ci=[low, high])


def generate_dataset(cfg, sd, name: str, paths, out_dir: Path) -> int:
    """`cfg.generate` images with the token into an ImageFolder class folder; files already
    there are kept, so an interrupted run resumes."""
    set_token(sd, load_token(paths.token, cfg.placeholder_token))
    prompt = class_prompt(EVAL_TEMPLATE, cfg.placeholder_token, name)
    todo = [s for s in range(cfg.generate) if not (out_dir / f"{s:05d}.png").exists()]
    for i in tqdm(range(0, len(todo), cfg.eval_batch_size), desc=f"generate {paths.dir_name}", leave=False):
        chunk = todo[i : i + cfg.eval_batch_size]
        seeds = [GENERATE_SEED_OFFSET + s for s in chunk]
        images = generate(sd, prompt, seeds, cfg.eval_steps, cfg.eval_guidance_scale, cfg.eval_batch_size)
        for s, im in zip(chunk, images):
            save_image(out_dir / f"{s:05d}.png", im)
    return len(todo)
