"""Choosing a class's token among the tokens its runs offer (`--candidates`, `--select_every`): each is
judged on the held-out selection seeds by the training classifier alone (the evaluation classifier and
the evaluation seeds never take part), the most accurate becomes the class's token."""

import torch
import torch.nn.functional as F

from config import CANDIDATE_SEED_STRIDE, SELECTION_SEED, RunConfig, selecting
from diffusion import set_token
from evaluate import classify, eval_images, token_images
from prompt_datasets import EVAL_TEMPLATE, class_prompt
from stats import paired_gain, wilson
from tokens import save_token

SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # one pixel each way: an image that shows the class survives them


def candidate_seed(seed: int, k: int) -> int:
    """Candidate k's training-noise seed: candidate 0 is the run's own `seed` (so --candidates 1 is the
    original's single run); the others are far from every evaluation range (config.py, "seed ranges")."""
    return seed + k * CANDIDATE_SEED_STRIDE


def offered(run) -> list[tuple]:
    """A run's tokens offered to the selection: (epoch of a snapshot or None for the kept token, token)."""
    return [(None, run.kept)] + list(run.snapshots.items())


def selection_scores(cfg: RunConfig, sd, clf, per_class: list[list], names: list[str]) -> list:
    """Per class, per run, per offered token: its selection accuracy (all classes' tokens generated
    together); None per class when nothing is to be chosen (one run, no snapshots)."""
    if not selecting(cfg):
        return [None] * len(per_class)
    options = [
        (tok, run.target, name) for runs, name in zip(per_class, names) for run in runs for _, tok in offered(run)
    ]
    scores = iter(selection_accuracies(cfg, sd, clf, options))
    return [[[next(scores) for _ in offered(run)] for run in runs] for runs in per_class]


def best_offer(offers: list[tuple]) -> int:
    """The chosen offer among (selection accuracy, snapshot epoch or None for a kept token, the run's best
    training loss): the most accurate; ties: a kept token, then the lower loss, then the first listed."""
    return max(range(len(offers)), key=lambda i: (offers[i][0], offers[i][1] is None, -offers[i][2]))


def best_choice(runs: list, scores: list) -> tuple[int, int | None]:
    """(run, snapshot epoch or None for its kept token) of the best offer among `runs` (`best_offer`)."""
    flat = [(j, e, a) for j, (r, s) in enumerate(zip(runs, scores)) for (e, _), a in zip(offered(r), s)]
    k, epoch, _ = flat[best_offer([(a["selection_accuracy"], e, runs[j].best_loss) for j, e, a in flat])]
    return k, epoch


def token_of(runs: list, choice: tuple[int, int | None]) -> torch.Tensor:
    k, epoch = choice
    return runs[k].kept if epoch is None else runs[k].snapshots[epoch]


def keep_best(cfg: RunConfig, sd, runs: list, scores, paths) -> dict:
    """Save each candidate's kept token (and its snapshots); the chosen one (the only one, or the most
    accurate on the selection seeds; ties: a kept token, then the lower training loss) becomes the
    class's token. Returns the chosen run's summary (every candidate listed when there was a choice) and
    the chosen token."""
    if scores is None:
        k, epoch, listing = 0, None, None
    else:
        k, epoch = best_choice(runs, scores)
        picked = [[(j, e) == (k, epoch) for e, _ in offered(r)] for j, r in enumerate(runs)]
        listing = [candidate_entry(cfg, sd, *row) for row in zip(runs, scores, picked)]
    token = token_of(runs, (k, epoch))
    set_token(sd, token)
    save_token(paths.token, sd, cfg.placeholder_token, token)
    summary = runs[k].summary()
    if listing is None:
        return summary, token
    if epoch is not None:
        summary |= dict(
            kept_token=f"the token after epoch {epoch}'s update (a snapshot, chosen on the selection seeds)"
        )
    return summary | dict(candidate=k, snapshot_epoch=epoch, candidates=listing), token


def candidate_entry(cfg: RunConfig, sd, run, scores: list[dict], picked: list[bool]) -> dict:
    """One candidate in train_summary.json, its tokens written beside its log (files relative to its folder):
    the kept token and, with --select_every, the snapshots; `scores` and `picked` (the class's token?)
    follow `offered(run)`."""
    folder = run.log_path.parent  # one run: the class's own folder, where learned_embeds is the chosen token
    kept = folder / ("learned_embeds.safetensors" if cfg.candidates > 1 else "kept_token.safetensors")
    save_token(kept, sd, cfg.placeholder_token, run.kept)
    snapshots = []
    for (epoch, token), score, chosen in zip(list(run.snapshots.items()), scores[1:], picked[1:]):
        file = folder / "snapshots" / f"epoch{epoch:04d}.safetensors"
        save_token(file, sd, cfg.placeholder_token, token)
        snapshots.append(dict(epoch=epoch, file=str(file.relative_to(folder)), chosen=chosen) | score)
    entry = run.summary() | scores[0] | dict(file=kept.name, chosen=any(picked), kept_token_chosen=picked[0])
    return entry | (dict(snapshots=snapshots) if snapshots else {})


def selection_accuracies(cfg, sd, clf, options: list[tuple]) -> list[dict]:
    """Each option's ((token, target, class name)) accuracy on the selection seeds, judged by the training
    classifier `clf` only (the evaluation classifier and the evaluation seeds never take part in choosing),
    with its Wilson interval."""
    seeds = selection_seeds(cfg)
    out = []
    for images, (_, target, _) in zip(token_images(cfg, sd, [(t, n) for t, _, n in options], seeds), options):
        hits = sum(p == target for p in classify(clf, images, cfg.eval_batch_size, sd.device))
        out.append(dict(selection_accuracy=hits / len(seeds), selection_ci=list(wilson(hits, len(seeds)))))
    return out


def selection_seeds(cfg: RunConfig) -> list[int]:
    return list(range(SELECTION_SEED, SELECTION_SEED + cfg.select_size))


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The images moved by (dy, dx) pixels, the edge repeated into the gap."""
    p = max(abs(dy), abs(dx))
    padded = F.pad(images, (p, p, p, p), mode="replicate")
    h, w = images.shape[-2:]
    return padded[..., p - dy : p - dy + h, p - dx : p - dx + w]


def hits(cfg: RunConfig, clf, images: torch.Tensor, target: int, device) -> tuple[list[bool], list[bool]]:
    """Per seed: the training classifier names the class; and it still does under most one-pixel shifts."""
    plain = [p == target for p in classify(clf, images, cfg.eval_batch_size, device)]
    moved = [[p == target for p in classify(clf, shifted(images, *d), cfg.eval_batch_size, device)] for d in SHIFTS]
    return plain, [sum(m) * 2 > len(SHIFTS) for m in zip(*moved)]


def verdicts(cfg: RunConfig, sd, clf, chosen: list[tuple]) -> list[dict]:
    """Per class ((token, target, class name) each): did its token learn? Judged only by the training
    classifier on the selection seeds (never the evaluation judge or seeds): the token prompt against
    the baseline prompt on the same seeds, as images and under one-pixel shifts (a token that fools the
    classifier with pixel patterns loses its gain there). Learned: both gains' 95% intervals above zero."""
    seeds = selection_seeds(cfg)
    baseline = [class_prompt(EVAL_TEMPLATE, cfg.initializer_token, name) for _, _, name in chosen for _ in seeds]
    base_images = eval_images(cfg, sd, baseline, seeds * len(chosen)).split(len(seeds))
    token_sets = token_images(cfg, sd, [(tok, name) for tok, _, name in chosen], seeds)
    out = []
    for (_, target, _), tok_images, base in zip(chosen, token_sets, base_images):
        (t, ts), (b, bs) = hits(cfg, clf, tok_images, target, sd.device), hits(cfg, clf, base, target, sd.device)
        gain, shift = paired_gain(t, b), paired_gain(ts, bs)
        out.append(
            dict(
                seeds=[seeds[0], seeds[-1]],
                baseline_accuracy=sum(b) / len(b),
                token_accuracy=sum(t) / len(t),
                gain=gain[0],
                gain_ci=list(gain[1:]),
                shifted_baseline_accuracy=sum(bs) / len(bs),
                shifted_token_accuracy=sum(ts) / len(ts),
                shifted_gain=shift[0],
                shifted_gain_ci=list(shift[1:]),
                learned=gain[1] > 0 and shift[1] > 0,
                nothing_to_learn=all(b),  # the plain prompt already draws the class on every selection seed
            )
        )
    return out


def short_of(v: dict, margin: float) -> str | None:
    """Why a token's verdict falls short of `margin` points of gain on the selection seeds (as images, and
    under one-pixel shifts), or None when it reaches it. The margin is capped by the room left: a class the
    plain prompt already draws on nearly every seed needs only reach 100%."""
    for what, base, gain in (
        ("selection gain", v["baseline_accuracy"], v["gain"]),
        ("shifted gain", v["shifted_baseline_accuracy"], v["shifted_gain"]),
    ):
        need = min(margin / 100, 1 - base)
        if gain < need - 1e-9:
            return f"its {what} {gain * 100:+.0f} is below {need * 100:+.0f} points"
    return None
