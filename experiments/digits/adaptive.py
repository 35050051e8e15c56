"""Try again only where it did not learn: replays `--retry_below M` on a finished `--candidates K` run.

`run.py --candidates K --retry_below M` trains candidate 0 of every class, then candidate k + 1 only for the
classes whose best token so far (chosen on the selection seeds, as `selection.keep_best` chooses) gains less
than M points over the plain prompt on the selection seeds, as images or under one-pixel shifts
(`selection.short_of`), up to K. Candidate k trains from the same noise seed under plain `--candidates K`, so
a finished `--candidates K --select_every N` run holds every token any (M, K' <= K) would train. This script
decides, with the product's own functions and the selection seeds alone, which candidates each rule trains
and which token it keeps, then judges the kept tokens on evaluation seeds with the judge:

- `one run`: candidate 0's choice (the preset: one run per class);
- `candidates K'`: the best of K' candidates (plain `--candidates K'`);
- `retry M, K'`: the adaptive rule, with its cost (candidates trained, epochs trained) relative to one run.

Choose M and K' with `--at validation`; report with `--at test` (the same tokens, other seeds). Writes
`adaptive_<exp_id>_<at>.json` into the output folder and prints a table.

python run.py --preset digits --class_index 1,2,4,7,8,9 --candidates 3 --class_batch 6 --seed 35 \
    --evaluate False --exp_id k3_s35 --output_path out/adapt
python experiments/digits/adaptive.py out/adapt --exp_id k3_s35 --margins 0 5 10 15 20 --at validation
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config import TEST_SEED, VALIDATION_SEED  # noqa: E402
from experiments.digits.replay_selection import judged, offers, world  # noqa: E402
from report import bounds  # noqa: E402
from selection import best_offer, short_of, verdicts  # noqa: E402
from stats import mean_interval, paired_gain  # noqa: E402
from tokens import load_token  # noqa: E402


def best_of_first(offered: list[dict], k: int) -> int:
    """The index (into `offered`) of the best offer among candidates 0..k, by run.py's rule."""
    pool = [i for i, o in enumerate(offered) if o["candidate"] <= k]
    return pool[best_offer([(offered[i]["selection"], offered[i]["epoch"], offered[i]["loss"]) for i in pool])]


def rule_choices(offered: list[dict], short: list[list], margins: list[float], ks: list[int]) -> dict:
    """Each rule's (chosen offer, candidates trained); `short[k][m]`: is the best of candidates 0..k short of
    margin m (a reason) or not (None)?"""
    out = {"one run": (best_of_first(offered, 0), 1)}
    for kk in ks:
        out[f"candidates {kk}"] = (best_of_first(offered, kk - 1), kk)
        for m, margin in enumerate(margins):
            k = next((k for k in range(kk) if short[k][m] is None), kk - 1)
            out[f"retry {margin:g}, {kk}"] = (best_of_first(offered, k), k + 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output_path")
    ap.add_argument("--exp_id", required=True)
    ap.add_argument("--margins", type=float, nargs="+", default=[0, 5, 10, 15, 20])
    ap.add_argument("--at", choices=["validation", "test"], required=True, help="the evaluation seeds")
    ap.add_argument("--seeds", type=int, default=100)
    a = ap.parse_args()
    summaries = sorted(Path(a.output_path, "pipeline_token").glob(f"*/{a.exp_id}/train_summary.json"))
    if not summaries:
        ap.error(f"no pipeline_token/*/{a.exp_id}/train_summary.json under {a.output_path} (training not finished?)")
    classes = [(p, json.loads(p.read_text())) for p in summaries]
    k_max = len(classes[0][1]["candidates"])
    ks = list(range(2, k_max + 1))
    first = VALIDATION_SEED if a.at == "validation" else TEST_SEED
    cfg, sd, classifiers = world("--class_batch", str(k_max + 1), "--output_path", a.output_path)
    seeds = list(range(first, first + a.seeds))
    report, rows = [], {}
    for path, summary in classes:
        index, name = int(path.parts[-3].split("_")[0]) - 1, path.parts[-3].split("_", 1)[1]
        offered = offers(summary, path.parent)
        tokens = [load_token(o["file"], sd, cfg.placeholder_token) for o in offered]
        bests = [best_of_first(offered, k) for k in range(k_max)]
        seen = verdicts(cfg, sd, classifiers["classifier"], [(tokens[i], index, name) for i in bests])
        short = [[short_of(v, m) for m in a.margins] for v in seen]
        chosen = rule_choices(offered, short, a.margins, ks)
        unique = sorted({i for i, _ in chosen.values()})
        base = [(sd.init_embedding, name)]  # the initializer's row in S_c's slot: the plain prompt
        baseline, *scored = judged(cfg, sd, classifiers, base + [(tokens[i], name) for i in unique], seeds, index)
        by_offer = dict(zip(unique, scored))
        epochs = [c["epochs"] for c in summary["candidates"]]
        result = {}
        for rule, (i, trained) in chosen.items():
            gain = paired_gain(by_offer[i]["hits"], baseline["hits"])
            result[rule] = dict(offer=i, candidates=trained, epochs=sum(epochs[:trained]), gain=gain)
            result[rule] |= dict(token=by_offer[i]["judge"], agree=by_offer[i]["agree"])  # the judges agree
            rows.setdefault(rule, []).append(result[rule] | dict(one_run_epochs=epochs[0]))
        report.append(dict(class_index=index + 1, name=name, baseline=baseline["judge"], rules=result))
        report[-1]["baseline_agree"] = baseline["agree"]
        report[-1] |= dict(selection_verdicts=seen)  # of the best of candidates 0..k, for each k
        cells = "  ".join(f"{r}: {100 * x['gain'][0]:+.0f}" for r, x in result.items())
        print(f"{index + 1:>2} {name:<6} baseline {baseline['judge']:.2f}  {cells}", flush=True)
    print(f"\n{a.at} seeds {seeds[0]}..{seeds[-1]}, judge {classifiers['eval_classifier'].name}")
    print("| rule | mean gain [t 95%] | lowest | candidates / class | epochs vs one run |")
    print("| --- | --- | --- | --- | --- |")
    for rule, xs in rows.items():
        mean, lo, hi = mean_interval([100 * x["gain"][0] for x in xs])
        cost = sum(x["epochs"] for x in xs) / sum(x["one_run_epochs"] for x in xs)
        trained = sum(x["candidates"] for x in xs) / len(xs)
        span = "" if lo is None else " " + bounds(lo / 100, hi / 100, signed=True)  # ends rounded outward
        print(
            f"| {rule} | {mean:+.1f}{span} | {min(100 * x['gain'][0] for x in xs):+.0f} | {trained:.2f} | {cost:.2f}x |"
        )
    out = Path(a.output_path) / f"adaptive_{a.exp_id}_{a.at}.json"
    out.write_text(json.dumps(dict(seeds=[seeds[0], seeds[-1]], margins=a.margins, classes=report), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
