"""Why does gradient through the last denoising step barely move the digits world?

    python experiments/digits/investigate.py                 # all three parts, markdown on stdout (~20 min, 2 cores)
    python experiments/digits/investigate.py --parts decided,gradient

1. decided: for each ambiguous word, at which step of the sampler is the digit fixed? The
   predicted x0 of every step is decoded and classified; we report how often it already
   shows the final image's digit.
2. gradient: the token's gradient (one epoch, the preset's 8 images) through the last N
   steps, its norm and per-coordinate RMS next to AdamW's eps (1e-8).
3. accuracy: the preset's full run (train + 100 evaluation seeds, judged by the
   independent classifier) for several grad_steps.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import run  # noqa: E402
from classifiers import load_classifier  # noqa: E402
from config import parse_args  # noqa: E402
from diffusion import decode, denoise, encode, initial_noise, load_sd  # noqa: E402
from prompt_datasets import EVAL_TEMPLATE, PromptDataset, class_prompt  # noqa: E402
from train import train_step  # noqa: E402

AMBIGUOUS_CLASSES = {"stick": (2, 8), "loop": (1, 7), "curl": (4, 9)}  # 1-based CLI indices


def setup(extra=()):
    cfg = parse_args(["--preset", "digits", "--device", "cpu", *extra])
    sd = load_sd(
        cfg.sd_model,
        torch.device("cpu"),
        torch.float32,
        size=(cfg.height, cfg.width),
        placeholder="newclas",
        initializer="a",
    )
    return cfg, sd, load_classifier(cfg.classifier), load_classifier(cfg.eval_classifier)


@contextmanager
def predicted_x0(scheduler):
    """Collects each sampler step's predicted x0: the scheduler's own `step`, wrapped while the block runs."""
    step, x0 = scheduler.step, []

    def recording(*args, **kwargs):
        out = step(*args, **kwargs)
        x0.append(out.pred_original_sample)
        return out

    scheduler.step = recording
    try:
        yield x0
    finally:
        del scheduler.step  # the class's method again


@torch.no_grad()
def decided(seeds: int) -> str:
    cfg, sd, _, judge = setup()
    lines = ["| word | step " + " | ".join(str(i + 1) for i in range(cfg.eval_steps)) + " | final |"]
    lines.append("| --- " * (cfg.eval_steps + 2) + "|")
    for word in AMBIGUOUS_CLASSES:
        prompt = class_prompt(EVAL_TEMPLATE, "a", word)
        n = seeds
        latents = initial_noise(sd, seeds=list(range(n)))
        cond, uncond = encode(sd, [prompt]).expand(n), encode(sd, [""]).expand(n)
        with predicted_x0(sd.scheduler) as x0_preds:
            final = denoise(sd, latents, cond, uncond, cfg.eval_steps, cfg.eval_guidance_scale)
        final_cls = judge(decode(sd, final)).argmax(1)
        agree = [(judge(decode(sd, x0)).argmax(1) == final_cls).float().mean().item() for x0 in x0_preds]
        lines.append(f"| {word} | " + " | ".join(f"{a:.0%}" for a in agree) + " | 100% |")
    return "\n".join(lines)


def gradient(grad_steps: list[int]) -> str:
    lines = ["| grad_steps | token gradient norm | per-coordinate RMS | RMS / AdamW eps |", "| --- | --- | --- | --- |"]
    cfg, sd, clf, _ = setup()
    target = AMBIGUOUS_CLASSES["stick"][0] - 1
    prompts = PromptDataset(cfg.placeholder_token, "stick", cfg.number_of_prompts, cfg.epoch_size).epoch(cfg.seed, 0)
    noise = initial_noise(sd, n=cfg.epoch_size, seed=cfg.seed)
    for g in grad_steps:
        cfg.grad_steps = g
        sd.token.grad = None
        loss, _, _ = train_step(sd, clf, prompts, noise, target, cfg)
        (loss / cfg.epoch_size).backward()
        norm = sd.token.grad.norm().item()
        rms = norm / sd.token.numel() ** 0.5
        lines.append(f"| {g} | {norm:.2e} | {rms:.2e} | {rms / cfg.eps:.1f} |")
    return "\n".join(lines)


def accuracy(grad_steps: list[int], classes: list[int]) -> str:
    lines = [
        "| class | grad_steps | baseline (judge B) | token (judge B) | token (judge A, trained against) | epochs | "
        "train s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    out = Path(tempfile.mkdtemp(prefix="investigate_"))
    for c in classes:
        for g in grad_steps:
            exp = f"grad{g}"
            args = ["--preset", "digits", "--class_index", str(c), "--grad_steps", str(g), "--exp_id", exp]
            assert run.main([*args, "--output_path", str(out)]) == 0
            d = next((out / "pipeline_token").glob(f"{c}_*")) / exp
            m, t = json.loads((d / "metrics.json").read_text()), json.loads((d / "train_summary.json").read_text())
            b, a = m["eval_classifier"], m["classifier"]
            lines.append(
                f"| {c} {m['class_name']} | {g} | {b['baseline_accuracy']:.0%} | {b['token_accuracy']:.0%} | "
                f"{a['token_accuracy']:.0%} | {t['epochs']} | {t['seconds']:.0f} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="decided,gradient,accuracy")
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--grad_steps", default="1,3,15")
    p.add_argument("--classes", default="2,9")
    a = p.parse_args()
    steps = [int(x) for x in a.grad_steps.split(",")]
    start = time.time()
    if "decided" in a.parts:
        print("### When is the digit decided? (share of seeds whose predicted x0 already shows the final digit)\n")
        print(decided(a.seeds) + "\n")
    if "gradient" in a.parts:
        print("### The token's gradient, one epoch of class 2 (stick -> digit 1)\n")
        print(gradient(steps) + "\n")
    if "accuracy" in a.parts:
        print("### Accuracy by grad_steps (100 evaluation seeds, never seen in training)\n")
        print(accuracy(steps, [int(x) for x in a.classes.split(",")]) + "\n")
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
