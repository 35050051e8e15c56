"""Image quality in the digits world: how close are the generated digits to real ones?

    python run.py --preset digits --class_index 1,2,4,7,8,9 --output_path runs/evid   # train, evaluate (test seeds)
    python experiments/digits/quality.py --run runs/evid                                           # this table

The paper claims DisCo's images are of higher quality than the base model's. Here "quality" is a
Frechet distance between the images of a prompt and real images of the class, on the penultimate
features of the judge (classifier_b, the ConvNeXt the token was not trained against): the Gaussian
fitted to one set of features against the Gaussian fitted to the other. It is NOT the Inception FID
of the literature (other features, 64 dimensions, ~36 real images per class); compare its numbers
only with each other. Lower is closer to real.

1. Writes the held-out real digits of every class (digits.data.load_split(), never used for training)
   as reference folders <run>/fid_reference/<class dir>/ (the layout `run.py --fid_reference` reads).
2. For each ambiguous class evaluated in the run, reads the evaluation images that run.py saved
   (img/<class dir>/<exp_id>/eval/baseline and eval/token: the same test seeds for both prompts) and
   compares each set with the held-out digits of the class.
Two rows of real images put the numbers on a scale: real train-split digits of the class (a floor:
what real images of the right digit score with the same number of images) and real train-split
digits of the other digit that shares the word (what the wrong digit scores).
Prints a markdown table and writes it as JSON (<run>/quality.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from digits.data import AMBIGUOUS, DIGIT_WORDS, load_split  # noqa: E402
from utils import class_dir_name, save_image, write_json  # noqa: E402

HERE = Path(_ROOT) / "digits"  # the digits world
# The six ambiguous classes: 1-based CLI index = digit + 1 (the classifiers' class i is digit i).
AMBIGUOUS_DIGITS = sorted(d for pair in AMBIGUOUS.values() for d in pair)


def other_digit(d: int) -> int:
    """The digit that shares d's word ("stick": 1 <-> 7)."""
    return next(a + b - d for a, b in AMBIGUOUS.values() if d in (a, b))


def write_references(out: Path) -> dict[int, Path]:
    """Held-out real digits of every class as PNG folders <out>/<class dir>/; returns digit -> folder."""
    _, _, x, y = load_split()
    folders = {}
    for d in range(10):
        folder = out / class_dir_name(d, DIGIT_WORDS[d])
        for i, im in enumerate(x[y == d]):
            if not (folder / f"{i:04d}.png").exists():
                save_image(folder / f"{i:04d}.png", im)
        folders[d] = folder
    return folders


def quantized(x: torch.Tensor) -> torch.Tensor:
    """As if saved to and read from an 8-bit PNG, like the generated and reference images."""
    return (x * 255).round() / 255


def quality_rows(run: Path, exp_id: str, judge_dir: str, batch: int = 100) -> list[dict]:
    from classifiers import load_classifier
    from evaluate import head_features, load_images
    from stats import frechet_distance
    from workspace import quiet_libraries

    quiet_libraries()
    judge = load_classifier(judge_dir)
    refs = write_references(run / "fid_reference")
    x_train, y_train, _, _ = load_split()

    def feats(images: torch.Tensor) -> np.ndarray:
        return head_features(judge, images, batch, torch.device("cpu"))

    rows = []
    for d in AMBIGUOUS_DIGITS:
        eval_dir = run / "img" / class_dir_name(d, DIGIT_WORDS[d]) / exp_id / "eval"
        if not (eval_dir / "token").is_dir():
            continue
        real = feats(load_images(refs[d], (16, 16)))
        gen = {kind: load_images(eval_dir / kind, (16, 16)) for kind in ("baseline", "token")}
        n = len(gen["token"])
        same, other = (quantized(x_train[y_train == k][:n]) for k in (d, other_digit(d)))
        row = dict(class_index=d + 1, digit=d, word=DIGIT_WORDS[d], n_generated=n, n_reference=len(real))
        row |= {f"fd_{kind}": frechet_distance(feats(images), real) for kind, images in gen.items()}
        row |= dict(fd_real_same_digit=frechet_distance(feats(same), real), n_real=len(same))
        row |= dict(fd_real_other_digit=frechet_distance(feats(other), real), other_digit=other_digit(d))
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| class | target | FD baseline | FD token | real, same digit (floor) | real, other digit | images |"]
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        lines.append(
            f"| {r['class_index']} {r['word']} | digit {r['digit']} | {r['fd_baseline']:.2f} | {r['fd_token']:.2f} "
            f"| {r['fd_real_same_digit']:.2f} | {r['fd_real_other_digit']:.2f} (digit {r['other_digit']}) "
            f"| {r['n_generated']} vs {r['n_reference']} real |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run.py's --output_path of an evaluated digits run")
    ap.add_argument("--exp_id", default="default")
    ap.add_argument("--judge", default=str(HERE / "classifier_b"), help="classifier whose features are compared")
    ap.add_argument("--json", default="", help="where to write the table as JSON (default <run>/quality.json)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    run = Path(args.run)
    rows = quality_rows(run, args.exp_id, args.judge)
    if not rows:
        sys.exit(f"quality.py: error: no evaluated ambiguous class under {run / 'img'} (exp_id {args.exp_id})")
    seconds = time.perf_counter() - start
    print(f"Frechet distance to held-out digits, {Path(args.judge).name} penultimate features ({seconds:.0f} s)\n")
    print(table(rows))
    note = "Frechet distance on the judge's penultimate features; not the Inception FID of the literature"
    write_json(Path(args.json or run / "quality.json"), dict(judge=args.judge, note=note, seconds=seconds, rows=rows))
    return rows


if __name__ == "__main__":
    main()
