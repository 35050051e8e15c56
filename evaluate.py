"""Evaluation (token prompt vs baseline prompt on the same seeds) and data generation."""

import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from config import GENERATE_SEED_OFFSET
from diffusion import generate, precision, safety_checked, set_token
from prompt_datasets import EVAL_TEMPLATE, class_prompt
from stats import frechet_distance, paired_gain, wilson
from tokens import load_token
from utils import UsageError, comparison_grid, empty_dir, read_json, save_image, write_json


@torch.no_grad()
def classify(clf, images: torch.Tensor, batch_size: int, device) -> list[int]:
    preds = []
    for i in range(0, len(images), batch_size):
        preds += clf(images[i : i + batch_size].to(device)).argmax(1).tolist()
    return preds


def evaluate_class(cfg, sd, classifiers: dict, target: int, name: str, paths) -> dict:
    """Generate the evaluation seeds with "A photo of S_c <class>" and "A photo of a <class>",
    classify both with every classifier, save images, the grid and metrics.json. The returned metrics
    name the images written (`images`: per prompt, paths relative to `paths.img_dir`, in seed order)."""
    return evaluate_classes(cfg, sd, classifiers, [(target, name, paths)])[0]


def evaluate_classes(cfg, sd, classifiers: dict, jobs: list[tuple]) -> list[dict]:
    """`evaluate_class` for several classes ((index, name, ClassPaths) each), their images generated
    together: class k's saved token in placeholder slot k, one prompt per image."""
    start = time.time()
    seeds = list(range(cfg.eval_seed, cfg.eval_seed + cfg.test_size))
    for k, (_, _, paths) in enumerate(jobs):
        set_token(sd, load_token(paths.token, sd, cfg.placeholder_token), k)  # base model + the saved token
    words = {"baseline": [cfg.initializer_token] * len(jobs), "token": [sd.slot_word(k) for k in range(len(jobs))]}
    images = {}
    for kind, ws in words.items():
        prompts = [class_prompt(EVAL_TEMPLATE, w, name) for w, (_, name, _) in zip(ws, jobs) for _ in seeds]
        images[kind] = eval_images(cfg, sd, prompts, seeds * len(jobs)).split(len(seeds))
    seconds = (time.time() - start) / len(jobs)
    out = []
    for k, (target, name, paths) in enumerate(jobs):
        generated = {kind: images[kind][k] for kind in words}
        out.append(judge_class(cfg, classifiers, target, name, paths, generated, seeds, sd.device, seconds))
    return out


def judge_class(cfg, classifiers: dict, target: int, name: str, paths, generated: dict, seeds, device, seconds):
    """Classify one class's images with every classifier; write its images, grid.png and metrics.json."""
    start = time.time()
    prompts = {
        "token": class_prompt(EVAL_TEMPLATE, cfg.placeholder_token, name),
        "baseline": class_prompt(EVAL_TEMPLATE, cfg.initializer_token, name),  # the original's (docs/original.md §6)
    }
    metrics = dict(class_index=target + 1, class_name=name, exp_id=cfg.exp_id, seeds=seeds, prompts=prompts)
    metrics["settings"] = dict(sd_model=cfg.sd_model, steps=cfg.eval_steps, guidance_scale=cfg.eval_guidance_scale)
    metrics["intervals"] = "95%: Wilson score (accuracies); Newcombe's paired square-and-add (gain), stats.py"
    rows, main = [], next(iter(classifiers))
    for kind in ("baseline", "token"):
        images = generated[kind]
        for role, clf in classifiers.items():
            preds = classify(clf, images, cfg.eval_batch_size, device)
            res = metrics.setdefault(role, dict(name=clf.name))
            res[f"{kind}_accuracy"] = sum(p == target for p in preds) / len(preds)
            res[f"{kind}_predictions"] = preds
        preds = metrics[main][f"{kind}_predictions"]
        labels = classifiers[main].labels
        files = [f"eval/{kind}/seed{seed:05d}_{p}_{labels[p]}.png" for seed, p in zip(seeds, preds)]
        empty_dir(paths.img_dir / "eval" / kind)  # an earlier evaluation's images carry other predictions
        for f, im in zip(files, images):
            save_image(paths.img_dir / f, im)
        metrics.setdefault("images", {})[kind] = files  # relative to the class's img folder, in seed order
        shown = prompts[kind].replace(cfg.placeholder_token, "S_c")  # the token's name in the paper
        rows.append((f"{kind}: {shown}", list(images), [f"{p + 1}: {labels[p]}" for p in preds]))  # 1-based, as the CLI
    for role in classifiers:
        metrics[role].update(intervals(metrics[role], target))
    if len(classifiers) == 2:  # images off the data manifold can fool one judge and not the other
        a, b = (metrics[role] for role in classifiers)
        metrics["agreement"] = {k: agreement(a[f"{k}_predictions"], b[f"{k}_predictions"]) for k in prompts}
    if cfg.fid_reference:
        folder = fid_reference_dir(cfg, paths.dir_name)
        metrics["fid"] = frechet_to_reference(cfg, classifiers, generated, folder, device)
    save_image(paths.img_dir / "grid.png", comparison_grid(rows))
    metrics["images"]["grid"] = "grid.png"
    metrics["seconds"] = round(seconds + time.time() - start, 2)
    write_json(paths.metrics, metrics)
    return metrics


def eval_images(cfg, sd, prompt, seeds: list[int]) -> torch.Tensor:
    """The evaluation sampler's images; `eval_as_original`: in fp32 and through the model's safety checker,
    as the original evaluated (docs/original.md §6)."""
    if not cfg.eval_as_original:
        return generate(sd, prompt, seeds, cfg.eval_steps, cfg.eval_guidance_scale, cfg.eval_batch_size)
    with precision(sd, torch.float32):
        images = generate(sd, prompt, seeds, cfg.eval_steps, cfg.eval_guidance_scale, cfg.eval_batch_size)
    return safety_checked(sd, images)


def agreement(a: list[int], b: list[int]) -> float:
    """The share of seeds on which two classifiers predict the same class."""
    return sum(x == y for x, y in zip(a, b)) / len(a)


def intervals(res: dict, target: int) -> dict:
    """95% intervals from one classifier's per-seed predictions (stats.py): Wilson for each accuracy,
    Newcombe's paired interval for the gain (both prompts were judged on the same seeds)."""
    hits = {kind: [p == target for p in res[f"{kind}_predictions"]] for kind in ("baseline", "token")}
    out = {f"{kind}_ci": list(wilson(sum(h), len(h))) for kind, h in hits.items()}
    gain, low, high = paired_gain(hits["token"], hits["baseline"])
    return out | dict(gain=gain, gain_ci=[low, high])


def token_images(cfg, sd, options: list[tuple], seeds: list[int]):
    """Yields each option's ((token, class name)) images of "A photo of S_c <class>" for `seeds`, with the
    evaluation sampler; the options are generated together, one placeholder slot each."""
    slots = len(sd.words)
    try:
        for start in range(0, len(options), slots):
            chunk = options[start : start + slots]
            for k, (token, _) in enumerate(chunk):
                set_token(sd, token, k)
            prompts = [class_prompt(EVAL_TEMPLATE, sd.slot_word(k), n) for k, (_, n) in enumerate(chunk) for _ in seeds]
            yield from eval_images(cfg, sd, prompts, seeds * len(chunk)).split(len(seeds))
    finally:
        for k in range(slots):  # the slots are free again
            set_token(sd, sd.init_embedding, k)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def fid_reference_dir(cfg, dir_name: str) -> Path:
    """--fid_reference DIR: DIR/<class dir> (e.g. DIR/283_tiger_cat) if it exists, else DIR itself for a
    one-class run (a multi-class run needs one folder per class)."""
    root = Path(cfg.fid_reference)
    if (root / dir_name).is_dir():
        return root / dir_name
    if len(cfg.classes) <= 1 and any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir()):
        return root
    raise UsageError(f"--fid_reference {cfg.fid_reference!r}: no folder {dir_name}/ of real images in it")


def check_fid_references(cfg, classes: list[int], labels: list[str]) -> None:
    """Before any training: every class has a reference folder with at least 2 images."""
    from utils import class_dir_name

    for c in classes if cfg.fid_reference else []:
        folder = fid_reference_dir(cfg, class_dir_name(c, labels[c]))
        if sum(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()) < 2:
            raise UsageError(f"--fid_reference: {folder} needs at least 2 images (a covariance)")


def load_images(folder: Path, size: tuple[int, int]) -> torch.Tensor:
    """Every image in `folder` as [N, 3, H, W] in [0, 1], resized (bicubic) to the generated images' size,
    so that real and generated images go through the classifier's preprocessing alike."""
    out = []
    for p in sorted(q for q in folder.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BICUBIC)
            out.append(torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


def head_of(clf) -> torch.nn.Module:
    """The classifier's final linear layer: transformers' `classifier` (ViT, ConvNeXt), timm's get_classifier()."""
    model = clf.model
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Module):
        raise UsageError(f"--fid_reference: classifier {clf.name} has no final layer to read features from")
    return head


@torch.no_grad()
def head_features(clf, images: torch.Tensor, batch_size: int, device) -> np.ndarray:
    """Penultimate features [N, D]: the input of the final linear layer, captured by a forward pre-hook."""
    feats = []
    hook = head_of(clf).register_forward_pre_hook(lambda _m, args: feats.append(args[0].flatten(1).float().cpu()))
    try:
        classify(clf, images, batch_size, device)
    finally:
        hook.remove()
    return torch.cat(feats).numpy()


def frechet_to_reference(cfg, classifiers: dict, generated: dict, folder: Path, device) -> dict:
    """Frechet distance between each prompt's images and real images of the class, on the judge's penultimate
    features (eval_classifier if set). Not the Inception FID of the literature (experiments/digits/NOTES.md,
    "Quality")."""
    role = "eval_classifier" if "eval_classifier" in classifiers else "classifier"
    clf = classifiers[role]
    real = head_features(clf, load_images(folder, (cfg.height, cfg.width)), cfg.eval_batch_size, device)
    out = dict(judge=role, classifier=clf.name, reference=str(folder), n_reference=len(real))
    for kind, images in generated.items():
        out[kind] = frechet_distance(head_features(clf, images, cfg.eval_batch_size, device), real)
    return out | dict(n_generated=len(next(iter(generated.values()))))


def generate_dataset(cfg, sd, name: str, paths, out_dir: Path) -> int:
    """`cfg.generate` images with the token into an ImageFolder class folder; files already there are kept,
    so an interrupted run resumes, unless `source.json` says another token or setting made them (e.g. the
    class was trained again)."""
    value = load_token(paths.token, sd, cfg.placeholder_token)
    set_token(sd, value)
    prompt = class_prompt(EVAL_TEMPLATE, cfg.placeholder_token, name)
    digest = hashlib.sha256(value.cpu().numpy().tobytes()).hexdigest()
    source = dict(prompt=prompt, sd_model=cfg.sd_model, steps=cfg.eval_steps, guidance_scale=cfg.eval_guidance_scale)
    source["token_sha256"] = digest
    stamp = out_dir / "source.json"
    if read_json(stamp) != source:  # another token or setting made those
        empty_dir(out_dir)
        write_json(stamp, source)
    todo = [s for s in range(cfg.generate) if not (out_dir / f"{s:05d}.png").exists()]
    for i in tqdm(range(0, len(todo), cfg.eval_batch_size), desc=f"generate {paths.dir_name}", leave=False):
        chunk = todo[i : i + cfg.eval_batch_size]
        seeds = [GENERATE_SEED_OFFSET + s for s in chunk]
        images = generate(sd, prompt, seeds, cfg.eval_steps, cfg.eval_guidance_scale, cfg.eval_batch_size)
        for s, im in zip(chunk, images):
            save_image(out_dir / f"{s:05d}.png", im)
    return len(todo)
