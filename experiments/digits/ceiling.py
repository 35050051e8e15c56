"""What does a token reach on the very seeds it is judged on? A reference, not a method: S_c is trained on
the validation seeds' own starting latents with the evaluation prompt "A photo of S_c <word>", with the
preset's training otherwise, then judged on those seeds and on as many others. It is one optimiser's run,
not an upper bound (a run can stay on a plateau, as any training can): experiments/digits/NOTES.md, "Why the
goal is not reached", measurement 6.

python experiments/digits/ceiling.py --class_index 2 4 8 --seeds 100 --out out/ceiling   # -- --lr 0.02: run.py flags

Per class (1-based): the judge's accuracy on the fitted seeds for the baseline prompt, the kept token
(lowest training loss) and the token of the epoch with the highest training accuracy, and the same
three on as many other validation seeds (never trained on), with the paired gain and its 95% interval.
Writes ceiling.json, and per class its training log and both tokens (kept, best_epoch .safetensors).
"""

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config import VALIDATION_SEED  # noqa: E402
from diffusion import initial_noise  # noqa: E402
from experiments.digits.replay_selection import judged, world  # noqa: E402
from prompt_datasets import EVAL_TEMPLATE, class_prompt  # noqa: E402
from stats import paired_gain  # noqa: E402
from tokens import save_token  # noqa: E402
from train import Run, make_scaler, train_runs  # noqa: E402
from utils import empty_dir, write_text  # noqa: E402


@dataclass
class FittedRun(Run):
    """A run whose every epoch is the evaluation prompt on the given seeds' own noises (they never change:
    there is nothing to re-seed after a collapse)."""

    fitted: list = field(default_factory=list)

    def epoch_inputs(self, sd, epoch: int):
        prompt = class_prompt(EVAL_TEMPLATE, sd.slot_word(self.slot), self.name)
        return [prompt] * len(self.fitted), initial_noise(sd, seeds=self.fitted)


def best_epoch_token(run: FittedRun):
    """(epoch, token) of the highest training accuracy (first such epoch): the token that drew it is the
    one before that epoch's update, i.e. the previous epoch's snapshot (epoch 0: the initializer)."""
    accuracies = [e["accuracy"] for e in run.log]
    epoch = accuracies.index(max(accuracies))
    return epoch, (run.init if epoch == 0 else run.snapshots[epoch - 1])


def fit(classes: list[int], seeds: int, out: Path, epochs: int, flags: list[str]) -> list[dict]:
    fitted = list(range(VALIDATION_SEED, VALIDATION_SEED + seeds))
    held_out = list(range(VALIDATION_SEED + seeds, VALIDATION_SEED + 2 * seeds))
    cfg, sd, classifiers = world(  # the script's own settings last: they win over `flags`
        *flags,
        *("--class_batch", str(len(classes)), "--epoch_size", str(seeds), "--select_every", "1"),
        *("--num_train_epochs", str(epochs), "--early_stopping", str(epochs), "--number_of_prompts", "1"),
        *("--reseed_on_collapse", "False"),
    )
    labels = classifiers["classifier"].labels
    runs = []
    for c in classes:
        folder = out / f"{c + 1}_{labels[c]}"
        empty_dir(folder)  # no image of an earlier fit beside this one's
        folder.mkdir(parents=True, exist_ok=True)
        log, scaler = folder / "train_log.jsonl", make_scaler(sd, cfg)
        runs.append(
            FittedRun(cfg, c, labels[c], cfg.seed, log, folder, sd.init_embedding, scaler, folder.name, fitted=fitted)
        )
    train_runs(cfg, sd, classifiers["classifier"], runs, labels, desc="fit")
    rows = [score(cfg, sd, classifiers, run, held_out) for run in runs]
    write_text(out / "ceiling.json", json.dumps(dict(fitted=fitted, held_out=held_out, rows=rows), indent=1))
    return rows


def cell(s: dict) -> str:
    """Judge accuracy (agreement of the two classifiers), and the paired gain with its 95% interval."""
    gain = f", {100 * s['gain']:+.0f} [{100 * s['low']:+.0f}, {100 * s['high']:+.0f}]" if "gain" in s else ""
    return f"{100 * s['judge']:.0f}% ({100 * s['agree']:.0f}%{gain})"


def score(cfg, sd, classifiers: dict, run: FittedRun, held_out: list[int]) -> dict:
    """Saves the run's kept and best-epoch tokens; judges both and the baseline on the fitted seeds and on
    `held_out`, with each token's paired gain over the baseline."""
    epoch, best = best_epoch_token(run)
    for name, token in (("kept", run.kept), ("best_epoch", best)):
        save_token(run.img_dir / f"{name}.safetensors", sd, cfg.placeholder_token, token)
    options = [(t, run.name) for t in (sd.init_embedding, run.kept, best)]
    row = dict(class_index=run.target + 1, word=run.name, epochs=len(run.log), stop=run.stop or "num_train_epochs")
    row |= dict(kept_epoch=run.kept_epoch, best_epoch=epoch, best_train_accuracy=run.log[epoch]["accuracy"])
    for where, seeds in (("fitted", run.fitted), ("held_out", held_out)):
        base, *tokens = judged(cfg, sd, classifiers, options, seeds, run.target)
        row[f"{where}_baseline"] = base
        for name, s in zip(("kept", "best_epoch"), tokens):
            row[f"{where}_{name}"] = s | dict(zip(("gain", "low", "high"), paired_gain(s["hits"], base["hits"])))
    return row


def table(rows: list[dict]) -> list[str]:
    out = ["| class | seeds | baseline | kept token | best-epoch token |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        for where, seeds in (("fitted", "fitted"), ("held_out", "other")):
            cells = " | ".join(cell(r[f"{where}_{n}"]) for n in ("baseline", "kept", "best_epoch"))
            out.append(f"| {r['class_index']} {r['word']} | {seeds} | {cells} |")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--class_index", type=int, nargs="+", required=True, help="1-based classes, trained together")
    ap.add_argument("--seeds", type=int, default=100, help="validation seeds fitted (and as many held out)")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("out/ceiling"))
    ap.add_argument("flags", nargs="*", help="run.py flags after --, e.g. -- --lr 0.02")
    a = ap.parse_args(argv)
    if min(a.class_index) < 1 or a.seeds < 1 or a.epochs < 1:
        ap.error("--class_index, --seeds and --epochs must be positive")
    print("judge accuracy (agreement of the two classifiers, gain over the baseline [paired 95% CI])")
    print("\n".join(table(fit([c - 1 for c in a.class_index], a.seeds, a.out, a.epochs, a.flags))))


if __name__ == "__main__":
    main()
