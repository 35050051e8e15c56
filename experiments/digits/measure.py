"""Measure the digits world with the plain diffusers pipeline and classifier B.

    python experiments/digits/measure.py [--seeds 100] [--steps 15] [--guidance 5] [--template "A photo of a {}"]

For every word, generates one image per seed from "A photo of a {word}" and prints a
markdown table of the fraction of images that classifier B assigns to each digit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402

from digits.build import classify, table  # noqa: E402
from digits.data import AMBIGUOUS, DIGIT_WORDS, RECOMMENDED, WORDS  # noqa: E402

HERE = os.path.join(_ROOT, "digits")  # the digits world


def load(pipeline_dir: str, classifier_dir: str):
    from diffusers import StableDiffusionPipeline
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    clf = AutoModelForImageClassification.from_pretrained(classifier_dir).eval()
    proc = AutoImageProcessor.from_pretrained(classifier_dir)
    return pipe, clf, proc


@torch.no_grad()
def measure(pipe, clf, proc, prompt: str, seeds: list[int], steps: int, guidance: float, batch: int = 100):
    """Counts (10,) of classifier predictions over one image per seed."""
    counts = torch.zeros(10, dtype=torch.long)
    for i in range(0, len(seeds), batch):
        chunk = seeds[i : i + batch]
        out = pipe(
            [prompt] * len(chunk),
            height=16,
            width=16,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(s) for s in chunk],
        )
        pred = classify(out.images, clf, proc)
        counts += torch.bincount(pred, minlength=10)
    return counts


def main(argv: list[str] | None = None) -> dict[str, torch.Tensor]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default=os.path.join(HERE, "pipeline"))
    ap.add_argument("--classifier", default=os.path.join(HERE, "classifier_b"), help="judge (default: classifier B)")
    ap.add_argument("--seeds", type=int, default=100, help="seeds 0..N-1, one image each per prompt")
    ap.add_argument("--steps", type=int, default=RECOMMENDED["num_inference_steps"])
    ap.add_argument("--guidance", type=float, default=RECOMMENDED["guidance_scale"])
    ap.add_argument("--template", default="A photo of a {}")
    ap.add_argument("--words", nargs="+", default=WORDS)
    ap.add_argument("--timestep-spacing", default=None, help="override the saved scheduler's timestep_spacing")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe, clf, proc = load(args.pipeline, args.classifier)
    if args.timestep_spacing:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, timestep_spacing=args.timestep_spacing)
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    results = {}
    for w in args.words:
        results[w] = measure(pipe, clf, proc, args.template.format(w), seeds, args.steps, args.guidance)
    dt = time.perf_counter() - t0
    sched = f"{type(pipe.scheduler).__name__} {pipe.scheduler.config.timestep_spacing}"
    judge = os.path.basename(os.path.normpath(args.classifier))
    print(
        f"{args.seeds} seeds per prompt, template {args.template!r}, {sched}, {args.steps} steps, "
        f"guidance {args.guidance}, judge {judge} ({dt:.0f} s)\n"
    )
    print(table(results, args.seeds))
    bad = [w for w in results if w not in AMBIGUOUS and results[w][DIGIT_WORDS.index(w)] < 0.9 * args.seeds]
    print(f"\nunambiguous words below 90%: {bad or 'none'}")
    return results


if __name__ == "__main__":
    main()
