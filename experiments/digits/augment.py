"""Augmentation in the digits world: do DisCo's images help a classifier that has few real examples?

    python run.py --preset digits --class_index 1,2,4,7,8,9 --generate 50 --output_path runs/evid
    python experiments/digits/baseline_images.py --run runs/evid   # 50 baseline images per class beside them
    python experiments/digits/augment.py --run runs/evid          # this table (seconds)

The paper claims DisCo's images help to augment training data in a low-resource setting. Here a
logistic regression on pixels (16 x 16 gray, sklearn) is trained on k real train-split digits per
digit (k = 2, 5, 10), plus, for each of the six ambiguous classes, the N generated images of that
class labelled as its digit:
  none      real images only;
  baseline  + "A photo of a <word>" images (generated_baseline/<class dir>/): what the base model
            offers without a token, so half of the "stick" images labelled 1 show a 7;
  token     + "A photo of S_c <word>" images (generated/<class dir>/);
  real      + as many other real train-split digits of those classes: the ceiling for any generator.
Class weights are balanced, so that extra images of some classes do not merely shift the prior
toward them. It is tested on the 360 held-out real digits (all ten digits, and the generated classes'
digits apart). Each setting is repeated over seeds that draw which k real images are used (the same
draws for every row); the table gives the mean accuracy with a 95% Student t interval over seeds, and token minus
baseline with a paired t interval (the same draws). Generated images use seeds from 1,000,000
(config.GENERATE_SEED_OFFSET), apart from training, validation and test seeds. Prints a markdown
table and writes it as JSON (<run>/augment.json).
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

CONDITIONS = ("none", "baseline", "token", "real")
GENERATED_DIRS = {"baseline": "generated_baseline", "token": "generated"}


def pixels(images) -> np.ndarray:
    """[N, 3, H, W] in [0, 1] -> [N, H*W] gray (the digits world is gray: R = G = B)."""
    return np.asarray(images, np.float64).mean(axis=1).reshape(len(images), -1)


def load_generated(run: Path, n: int = 0) -> dict[str, dict[int, np.ndarray]]:
    """{"baseline"|"token": {digit: pixels}} from run.py's ImageFolder output; <class dir> '2_stick' is digit 1.
    The same number of images (at most n, if n) per class and kind."""
    from evaluate import load_images

    out: dict[str, dict[int, np.ndarray]] = {}
    for kind, sub in GENERATED_DIRS.items():
        root = run / sub
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        out[kind] = {int(f.name.split("_")[0]) - 1: pixels(load_images(f, (16, 16))) for f in folders}
    if not out["token"] or out["token"].keys() != out["baseline"].keys():
        raise SystemExit(f"augment.py: error: {run} needs generated/ and generated_baseline/ for the same classes")
    m = min(len(x) for d in out.values() for x in d.values())
    m = min(m, n) if n else m
    return {kind: {d: x[:m] for d, x in per.items()} for kind, per in out.items()}


def draw(y: np.ndarray, k: int, seed: int, pool: np.ndarray | None = None) -> np.ndarray:
    """Indices of k examples of every class in y (only from `pool`, if given), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    pool = np.arange(len(y)) if pool is None else pool
    return np.concatenate([rng.choice(pool[y[pool] == c], k, replace=False) for c in np.unique(y[pool])])


def fit_and_score(x, y, x_test, y_test, digits: list[int], model: str = "logreg", seed: int = 0):
    """(accuracy on all test digits, accuracy on the test digits in `digits`)."""
    if model == "cnn":
        predicted = cnn_predict(x, y, x_test, seed)
    else:
        from sklearn.linear_model import LogisticRegression

        predicted = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x, y).predict(x_test)
    hit = predicted == y_test
    return float(hit.mean()), float(hit[np.isin(y_test, digits)].mean())


CNN_STEPS = 300  # Adam steps per CNN fit


def cnn_predict(x, y, x_test, seed: int) -> np.ndarray:
    """A small CNN (two 3x3 conv layers, 16 and 32 channels, max-pooling, a linear head) trained from
    scratch with Adam (lr 3e-3, full batch, CNN_STEPS steps) and class-balanced cross-entropy, as the
    logistic regression's class_weight="balanced"; seeded, so every condition starts from the same weights."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    side = int(round(x.shape[1] ** 0.5))
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (side // 4) ** 2, 10),
    )  # fmt: skip
    xt = torch.tensor(x, dtype=torch.float32).view(-1, 1, side, side)
    yt = torch.tensor(y, dtype=torch.long)
    counts = torch.bincount(yt, minlength=10).float()
    weight = torch.where(counts > 0, len(yt) / (10 * counts.clamp(min=1)), torch.zeros(()))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(CNN_STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(net(xt), yt, weight=weight).backward()
        opt.step()
    with torch.no_grad():
        return net(torch.tensor(x_test, dtype=torch.float32).view(-1, 1, side, side)).argmax(1).numpy()


def experiment(
    x_train, y_train, x_test, y_test, generated: dict, ks=(2, 5, 10), seeds=range(10), model: str = "logreg"
) -> list[dict]:
    """One record per (k, seed, condition): accuracy of a classifier trained on k real images per digit plus
    the condition's images of each generated class, labelled as the class's digit ("real": as many other
    real train images of those digits, the ceiling of what augmentation could give)."""
    digits = sorted(generated["token"])
    n = min(len(generated["token"][d]) for d in digits)
    extra = {"none": (np.zeros((0, x_train.shape[1])), np.zeros(0, int))}
    for kind in ("baseline", "token"):
        per = generated[kind]
        extra[kind] = (np.concatenate([per[d] for d in digits]), np.concatenate([[d] * len(per[d]) for d in digits]))
    records = []
    for k in ks:
        for seed in seeds:
            idx = draw(y_train, k, seed)
            rest = np.setdiff1d(np.flatnonzero(np.isin(y_train, digits)), idx)
            more = draw(y_train, min(n, *(np.sum(y_train[rest] == d) for d in digits)), seed, rest)
            extra["real"] = (x_train[more], y_train[more])
            for cond in CONDITIONS:
                x = np.concatenate([x_train[idx], extra[cond][0]])
                y = np.concatenate([y_train[idx], extra[cond][1]])
                acc, acc_amb = fit_and_score(x, y, x_test, y_test, digits, model, seed)
                records.append(dict(k=k, seed=seed, condition=cond, accuracy=acc, ambiguous_accuracy=acc_amb))
    return records


def summarize(records: list[dict]) -> list[dict]:
    """Per k and condition: mean and 95% t interval over seeds; and token - baseline, paired by seed."""
    from stats import mean_interval

    rows = []
    for k in sorted({r["k"] for r in records}):
        by = {
            c: sorted((r for r in records if r["k"] == k and r["condition"] == c), key=lambda r: r["seed"])
            for c in CONDITIONS
        }
        for c in [*CONDITIONS, "token - baseline"]:
            row = dict(k=k, condition=c, seeds=len(by["none"]))
            for key in ("accuracy", "ambiguous_accuracy"):
                if c == "token - baseline":
                    values = [t[key] - b[key] for t, b in zip(by["token"], by["baseline"])]
                else:
                    values = [r[key] for r in by[c]]
                row[key] = mean_interval(values)
            rows.append(row)
    return rows


def table(rows: list[dict], n_generated: int) -> str:
    def cell(v) -> str:
        mean, low, high = (100 * x if x is not None else None for x in v)
        return f"{mean:.1f}" if low is None else f"{mean:.1f} [{low:.1f}, {high:.1f}]"

    lines = [
        f"| k real per digit | training data: + {n_generated} images per generated class | accuracy, all digits | "
        "accuracy, the generated classes' digits |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['k']} | {r['condition']} | {cell(r['accuracy'])} | {cell(r['ambiguous_accuracy'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run.py's --output_path with generated/ and generated_baseline/")
    ap.add_argument("--k", type=int, nargs="+", default=[2, 5, 10], help="real train-split images per digit")
    ap.add_argument("--seeds", type=int, default=20, help="draws of the real images (seeds 0..N-1)")
    ap.add_argument("--n", type=int, default=0, help="generated images per class and prompt (0: all there)")
    ap.add_argument("--model", choices=["logreg", "cnn"], default="logreg", help="the classifier trained")
    ap.add_argument("--json", default="", help="where to write the table as JSON (default <run>/augment[_cnn].json)")
    args = ap.parse_args(argv)
    from digits.data import load_split
    from utils import write_json

    start = time.perf_counter()
    run = Path(args.run)
    generated = load_generated(run, args.n)
    x_train, y_train, x_test, y_test = (np.asarray(a) for a in load_split())
    x_train, x_test = pixels(x_train), pixels(x_test)
    records = experiment(x_train, y_train, x_test, y_test, generated, args.k, range(args.seeds), args.model)
    rows = summarize(records)
    n = len(next(iter(generated["token"].values())))
    seconds = time.perf_counter() - start
    classes = ", ".join(str(d + 1) for d in sorted(generated["token"]))
    print(f"{args.model}; classes {classes}; {args.seeds} seeds; mean [95% t interval] in %; {seconds:.0f} s\n")
    print(table(rows, n))
    out = Path(args.json or run / ("augment.json" if args.model == "logreg" else f"augment_{args.model}.json"))
    write_json(
        out,
        dict(
            model=args.model,
            classes=sorted(d + 1 for d in generated["token"]),
            n_generated=n,
            seconds=seconds,
            rows=rows,
            records=records,
        ),
    )
    return rows


if __name__ == "__main__":
    main()
