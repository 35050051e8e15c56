"""Which tokens should the selection see? Replays the choice of a finished `--select_every` run.

A run with `--candidates K --select_every N` keeps, for each class, every candidate's kept token (the
lowest-loss one, the original's rule) and its token every N epochs, each with its accuracy on the
selection seeds (the training classifier: train_summary.json). This script scores every one of those
tokens on the validation seeds with the judge and replays the selection rules on the same tokens:

- `single`: candidate 0's kept token (one run, the original's rule: `--candidates 1`);
- `kept`: the most accurate on the selection seeds among the K kept tokens (`--candidates K`);
- `every M`: the same among the kept tokens and the snapshots after every M epochs (`--select_every M`;
  snapshot epochs count from 0, as train_log.jsonl: M = 10 offers epochs 9, 19, ...);
- `single, every M`: candidate 0's kept token and snapshots (`--candidates 1 --select_every M`);
- `oracle`: the best token on the validation seeds themselves (a reference, not a rule).

Every rule chooses by the selection seeds alone (selection.best_offer); the judge and the validation seeds
only score the choice. Writes `selection_<exp_id>.json` into the run's folder and prints a table.

python experiments/digits/replay_selection.py out/sel --exp_id k3e10_s36 --every 10 20
python experiments/digits/replay_selection.py out/sel --exp_id k3e10_s36 --export "single, every 10" \
    --as s1e10_s36   # then
python run.py --preset digits --class_index 1-10 --train False --exp_id s1e10_s36 --output_path out/sel

`--export RULE --as EXP` writes, per class, the token RULE chooses (by the selection seeds, as above) as
experiment EXP of the same output folder, so that run.py evaluates it like any trained token.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config import VALIDATION_SEED, parse_args  # noqa: E402
from evaluate import classify, token_images  # noqa: E402
from selection import best_offer  # noqa: E402
from tokens import load_token  # noqa: E402
from workspace import ClassPaths, load_classifiers, load_diffusion, quiet_libraries  # noqa: E402


def offers(summary: dict, folder: Path) -> list[dict]:
    """Every token the run offered, with what the rules read: candidate, epoch (None: kept), file, accuracy."""
    out, paths = [], ClassPaths(folder.parent.name, folder, img_dir=Path())  # only the token folder is read
    for k, c in enumerate(summary["candidates"]):
        base = paths.candidate_files(k, len(summary["candidates"]))[0].parent
        out.append(dict(candidate=k, epoch=None, file=base / c["file"], loss=c["best_loss"]))
        out[-1]["selection"] = c["selection_accuracy"]
        for s in c.get("snapshots", []):
            out.append(dict(candidate=k, epoch=s["epoch"], file=base / s["file"], loss=c["best_loss"]))
            out[-1]["selection"] = s["selection_accuracy"]
    return out


def world(*args: str):
    """The digits world on the CPU for a replay: (cfg, sd, classifiers); `args` are run.py flags."""
    cfg = parse_args(["--preset", "digits", "--device", "cpu", *args])
    quiet_libraries()
    classifiers = load_classifiers(cfg, say_notes=False)
    return cfg, load_diffusion(cfg, classifiers, torch.device("cpu"), torch.float32), classifiers


def judged(cfg, sd, classifiers: dict, options: list[tuple], seeds: list[int], target: int) -> list[dict]:
    """Each option's ((token, class name)) share of images the judge calls `target` on `seeds` (and which
    seeds: `hits`), and how often the training classifier agrees with the judge."""
    out = []
    for images in token_images(cfg, sd, options, seeds):
        j, v = (
            classify(classifiers[r], images, cfg.eval_batch_size, sd.device) for r in ("eval_classifier", "classifier")
        )
        hits = [p == target for p in j]
        out.append(dict(judge=sum(hits) / len(j), agree=sum(x == y for x, y in zip(j, v)) / len(j), hits=hits))
    return out


def rules(offered: list[dict], every: list[int]) -> dict:
    """Each rule's choice: an index into `offered`."""
    pools = {"single": [i for i, o in enumerate(offered) if o["candidate"] == 0 and o["epoch"] is None]}
    pools["kept"] = [i for i, o in enumerate(offered) if o["epoch"] is None]
    for m in every:
        pools[f"every {m}"] = [i for i, o in enumerate(offered) if o["epoch"] is None or (o["epoch"] + 1) % m == 0]
        pools[f"single, every {m}"] = [i for i in pools[f"every {m}"] if offered[i]["candidate"] == 0]
    pick = {}
    for name, pool in pools.items():
        pick[name] = pool[
            best_offer([(offered[i]["selection"], offered[i]["epoch"], offered[i]["loss"]) for i in pool])
        ]
    return pick


def export(summaries: list[Path], exp_id: str, rule: str, every: list[int], target: str) -> None:
    """Each class's token chosen by `rule` (a class that stopped at once: its only token) into exp `target`."""
    for path in summaries:
        summary, src = json.loads(path.read_text()), path.parent
        token = src / "learned_embeds.safetensors"
        if "candidates" in summary:
            offered = offers(summary, src)
            token = offered[rules(offered, every)[rule]]["file"]
        dst = src.parent / target
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(token, dst / "learned_embeds.safetensors")
        shutil.copy(src / "config.json", dst / "config.json")
        print(f"{path.parts[-3]}: {Path(token).relative_to(src)} -> {dst}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output_path")
    ap.add_argument("--exp_id", required=True)
    ap.add_argument("--every", type=int, nargs="*", default=[10])
    ap.add_argument("--seeds", type=int, default=100, help="validation seeds from VALIDATION_SEED")
    ap.add_argument("--export", default="", help='a rule, e.g. "single, every 10": write its tokens as --as')
    ap.add_argument("--as", dest="target", default="", help="the experiment name the exported tokens get")
    a = ap.parse_args()
    summaries = sorted(Path(a.output_path, "pipeline_token").glob(f"*/{a.exp_id}/train_summary.json"))
    if a.export:
        return export(summaries, a.exp_id, a.export, a.every, a.target or ap.error("--export needs --as"))
    runs = [json.loads(p.read_text()) for p in summaries]
    if not runs:
        ap.error(f"no pipeline_token/*/{a.exp_id}/train_summary.json under {a.output_path} (training not finished?)")
    classes = [(p, offers(s, p.parent)) for p, s in zip(summaries, runs) if "candidates" in s]  # others: no choice
    slots = 1 + max((len(o) for _, o in classes), default=0)  # a class's baseline and offers in one generation
    args = ["--class_batch", str(slots), "--output_path", a.output_path]
    cfg, sd, classifiers = world(*args, "--eval_seed", str(VALIDATION_SEED), "--test_size", str(a.seeds))
    judge = classifiers["eval_classifier"]
    seeds = list(range(VALIDATION_SEED, VALIDATION_SEED + a.seeds))
    report = []
    for path, offered in classes:
        index, name = int(path.parts[-3].split("_")[0]) - 1, path.parts[-3].split("_", 1)[1]
        tokens = [(load_token(o["file"], sd, cfg.placeholder_token), name) for o in offered]
        base = [(sd.init_embedding, name)]  # the initializer's row: S_c's slot holds the baseline word
        baseline, *scored = judged(cfg, sd, classifiers, base + tokens, seeds, index)
        for o, s in zip(offered, scored):
            o.update(s, file=str(o["file"]))
        chosen = rules(offered, a.every)
        chosen["oracle"] = max(range(len(offered)), key=lambda i: offered[i]["judge"])
        report.append(dict(class_index=index + 1, name=name, baseline=baseline, offered=offered, chosen=chosen))
        row = "  ".join(f"{r}: {offered[i]['judge'] - baseline['judge']:+.2f}" for r, i in chosen.items())
        print(f"{index + 1:>2} {name:<6} baseline {baseline['judge']:.2f}  {row}", flush=True)
    names = list(report[0]["chosen"]) if report else []
    for r in names:
        gains = [c["offered"][c["chosen"][r]]["judge"] - c["baseline"]["judge"] for c in report]
        print(f"{r:>9}: mean gain {100 * sum(gains) / len(gains):+.1f}, minimum {100 * min(gains):+.0f}")
    out = Path(a.output_path) / f"selection_{a.exp_id}.json"
    out.write_text(json.dumps(dict(seeds=[seeds[0], seeds[-1]], judge=judge.name, classes=report), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
