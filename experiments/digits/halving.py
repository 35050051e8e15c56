"""Would dropping the candidates that are behind after E epochs (successive halving) keep the chosen token?

Replays a finished `--candidates K` run from its logs: candidates train independently (trained together
they give the same tokens as apart: tests/test_many_runs.py::test_runs_trained_together_equal_runs_trained_apart),
so dropping one at epoch E changes nothing for the others. At epoch E, of a class's candidates still
training, the worse half by best training loss so far stops; the choice is then made among the rest by
the same rule as run.py (selection accuracy, ties: lower training loss). Reports, per class, the choice
with and without halving and the share of training epochs saved.

python experiments/digits/halving.py out/val_k --epochs 25 50   # the validation run of NOTES.md "Several candidates"
"""

import argparse
import json
import math
from pathlib import Path


def replay(summary_path: Path, at: int) -> dict:
    summary = json.loads(summary_path.read_text())
    cands = summary["candidates"]
    folder = summary_path.parent / "candidates"
    logs = [[json.loads(line) for line in (folder / str(k) / "train_log.jsonl").open()] for k in range(len(cands))]
    live = [k for k, log in enumerate(logs) if len(log) > at]
    best_so_far = {k: min(e["loss"] for e in logs[k][:at]) for k in live}
    dropped = sorted(live, key=lambda k: best_so_far[k])[math.ceil(len(live) / 2) :] if len(live) > 1 else []
    kept = [k for k in range(len(cands)) if k not in dropped]
    choose = lambda ks: max(ks, key=lambda k: (cands[k]["selection_accuracy"], -cands[k]["best_loss"]))  # noqa: E731
    plain, halved = choose(range(len(cands))), choose(kept)
    return dict(
        cls=summary_path.parts[-3],
        plain=(plain, cands[plain]["selection_accuracy"]),
        halved=(halved, cands[halved]["selection_accuracy"]),
        saved=sum(len(logs[k]) - at for k in dropped),
        epochs=sum(len(log) for log in logs),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output_path")
    p.add_argument("--epochs", type=int, nargs="+", default=[25, 50])
    args = p.parse_args()
    summaries = sorted(Path(args.output_path).glob("pipeline_token/*/*/train_summary.json"))
    summaries = [s for s in summaries if "candidates" in json.loads(s.read_text())]
    print("| halve at epoch | class | chosen without (selection acc.) | chosen with | training epochs saved |")
    print("| --- | --- | --- | --- | --- |")
    for at in args.epochs:
        rows = [replay(s, at) for s in summaries]
        for r in rows:
            plain, halved = "{} ({:.2f})".format(*r["plain"]), "{} ({:.2f})".format(*r["halved"])
            print(f"| {at} | {r['cls']} | {plain} | {halved} | {r['saved']} of {r['epochs']} |")
        same = sum(r["plain"][0] == r["halved"][0] for r in rows)
        saved = sum(r["saved"] for r in rows) / sum(r["epochs"] for r in rows)
        print(f"| {at} | all | | same choice in {same} of {len(rows)} classes | {saved:.0%} |")


if __name__ == "__main__":
    main()
