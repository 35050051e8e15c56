"""The original code's computation in the digits world, and what each of its defects costs.

Trains `run.py --preset digits,original` (docs/original.md §7: the last sampler step's gradient, batch 1 with
accumulation, the clip before backward, the vocabulary decay, prompts padded to the longest, the plain clamp,
the 0.7 accuracy stop, no snapshots) for the given classes and training seeds, and the same run with one
defect switched off at a time (VARIANTS), each run in its own folder under the output folder, `--jobs` runs at
a time with one thread each. Then tabulates the judge's (classifier_b) gains on the evaluation seeds with
their paired intervals, the mean over classes per training seed, and what the training log says (stop,
epochs in the last-image regime). Finished runs are reused, so an interrupted grid resumes.

No setting is chosen here: each variant is one documented flag, so the test seeds report directly
(`--at test`, the default); `--at validation` evaluates on the validation seeds instead.

python experiments/digits/original_defects.py --variants original --seeds 35 36 37
python experiments/digits/original_defects.py --variants no_defects no_clip no_padding no_decay smooth_clamp --seeds 35
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from config import TEST_SEED, VALIDATION_SEED  # noqa: E402
from report import bounds  # noqa: E402
from stats import mean_interval, paired_gain  # noqa: E402
from utils import write_json  # noqa: E402

AMBIGUOUS_CLASSES = [1, 2, 4, 7, 8, 9]  # 1-based: loop->0, stick->1, curl->3, loop->6, stick->7, curl->8
# Each variant: the original's computation with one defect switched off (config.py's flags of §7).
VARIANTS = {
    "original": [],
    "no_clip": ["--clip_before_backward", "False"],
    "no_padding": ["--pad_to_longest", "False"],
    "no_decay": ["--decay_vocabulary", "False"],
    "smooth_clamp": ["--plain_clamp", "False"],
    "fp32_text_encoder": ["--text_encoder_autocast", "False"],
}
# Every defect off at once: the original's hard-coded rules (ORIGINAL_RULES) with the project's math.
VARIANTS["no_defects"] = [*sum(VARIANTS.values(), []), "--accuracy_stop_keeps", "reaching"]


def train(out: Path, variant: str, c: int, seed: int, at: str) -> Path:
    """One run.py run (skipped when its metrics exist); returns its token folder."""
    folder = out / at / f"{variant}_c{c}_s{seed}"
    exp_id = f"{variant}_s{seed}"
    found = list(folder.glob(f"pipeline_token/{c}_*/{exp_id}/metrics.json"))
    if not found:
        eval_seed = TEST_SEED if at == "test" else VALIDATION_SEED
        argv = [sys.executable, str(ROOT / "run.py"), "--preset", "digits,original", "--class_index", str(c)]
        argv += ["--seed", str(seed), "--eval_seed", str(eval_seed), "--exp_id", exp_id]
        argv += ["--output_path", str(folder), *VARIANTS[variant]]
        folder.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        with open(folder / "run.log", "w") as log:
            subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        found = list(folder.glob(f"pipeline_token/{c}_*/{exp_id}/metrics.json"))
    return found[0].parent


def summarize(token_dir: Path) -> dict:
    m = json.loads((token_dir / "metrics.json").read_text())
    t = json.loads((token_dir / "train_summary.json").read_text())
    log = [json.loads(line) for line in (token_dir / "train_log.jsonl").read_text().splitlines() if line]
    judge, target = m["eval_classifier"], m["class_index"] - 1
    tok = [p == target for p in judge["token_predictions"]]  # per seed, for the interval pooled over classes
    base = [p == target for p in judge["baseline_predictions"]]
    regimes = [e["last_image_regime"] for e in log if e.get("last_image_regime")]
    return dict(
        word=m["prompts"]["baseline"].split()[-1],
        baseline=judge["baseline_accuracy"],
        token=judge["token_accuracy"],
        gain=judge["gain"],  # run.py's own paired gain and interval
        gain_ci=judge["gain_ci"],
        _hits=(tok, base),
        epochs=t["epochs"],
        stop=t["stop"],
        last_image_alone=sum(r == "last image alone" for r in regimes),
        mixed=sum(r == "mixed" for r in regimes),
    )


def table(results: dict, classes: list[int], seeds: list[int]) -> list[str]:
    """Per variant and training seed: each class's accuracies and gain, the mean gain over the classes with
    its t and pooled intervals, and the mean difference from the original's gain class by class (t interval)."""
    head = " | ".join(f"class {c}" for c in classes)
    lines = [f"| variant | seed | {head} | mean [t 95%] | pooled 95% | vs original [t 95%] |"]
    lines.append("| --- " * (len(classes) + 5) + "|")
    for variant, by_run in results.items():
        for seed in seeds:
            rows = [by_run[(c, seed)] for c in classes if (c, seed) in by_run]
            if len(rows) < len(classes):
                continue
            cells = [f"{100 * r['baseline']:.0f}->{100 * r['token']:.0f} ({100 * r['gain']:+.0f})" for r in rows]
            pooled = paired_gain(sum((r["_hits"][0] for r in rows), []), sum((r["_hits"][1] for r in rows), []))
            cells += [with_t([r["gain"] for r in rows]), bounds(*pooled[1:], signed=True)]
            base = [results.get("original", {}).get((c, seed)) for c in classes]
            compare = variant != "original" and all(base)
            cells.append(with_t([r["gain"] - b["gain"] for r, b in zip(rows, base)]) if compare else "")
            lines.append(f"| {variant} | {seed} | {' | '.join(cells)} |")
    return lines


def with_t(values: list[float]) -> str:
    mean, low, high = mean_interval(values)
    mean = round(100 * mean, 1) + 0  # + 0: no "-0.0"
    return f"{mean:+.1f}" + ("" if low is None else f" {bounds(low, high, signed=True)}")  # one class: no t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["original"])
    ap.add_argument("--classes", nargs="+", type=int, default=AMBIGUOUS_CLASSES, help="1-based classes")
    ap.add_argument("--seeds", nargs="+", type=int, default=[35, 36, 37], help="training seeds")
    ap.add_argument("--at", choices=["validation", "test"], default="test", help="the evaluation seeds")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    ap.add_argument("--output_path", default=str(ROOT / "out" / "original"))
    args = ap.parse_args()
    out = Path(args.output_path)
    grid = [(v, c, s) for v in args.variants for s in args.seeds for c in args.classes]
    with ThreadPoolExecutor(args.jobs) as pool:
        dirs = list(pool.map(lambda job: train(out, *job, args.at), grid))
    results: dict = {v: {} for v in args.variants}
    for (v, c, s), d in zip(grid, dirs):
        results[v][(c, s)] = summarize(d)
    print("\n".join(table(results, args.classes, args.seeds)))
    path = out / f"original_defects_{args.at}.json"  # every invocation's runs, merged into the earlier ones
    dump = json.loads(path.read_text()) if path.exists() else {}
    for v, runs in results.items():
        dump.setdefault(v, {}).update({f"{c}/{s}": {k: r[k] for k in r if k != "_hits"} for (c, s), r in runs.items()})
    write_json(path, dump)


if __name__ == "__main__":
    main()
